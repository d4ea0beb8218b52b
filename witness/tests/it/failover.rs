//! Tie rule, grace period and witness restarts during a failover.

use std::time::{Duration, Instant};

use twinblk_witness::{Claim, DenyReason, Epoch, GrantOutcome, GroupId, Witness};

use crate::harness::*;

const PREFERRED: u32 = 2;
const OTHER: u32 = 1;

fn preferred_heartbeat(c: &mut twinblk_witness::WitnessClient, group: GroupId) {
    let v = c
        .heartbeat(&[Claim {
            group,
            preferred: true,
        }])
        .expect("heartbeat answered");
    assert_eq!(v[0].preferred, Some(site(PREFERRED)));
}

#[test]
fn the_preferred_site_wins_a_tie_even_when_it_asks_second() {
    // Long, so that a loaded machine cannot let it run out between the preferred site's
    // heartbeat and its request (which a fast one makes within about 200 ms).
    const GRACE_MS: u64 = 5000;
    let dir = tempfile::tempdir().expect("tempdir");
    let w = start(&state_path(&dir), any_port(), GRACE_MS);
    let group = GroupId::from_name("vg-tie");
    let mut p = client(w.addr, PREFERRED);
    preferred_heartbeat(&mut p, group);
    let addr = w.addr;
    let t0 = Instant::now();
    // The other site asks first and is held back (TIE_WAIT), retrying inside request_grant.
    let other = std::thread::spawn(move || {
        client(addr, OTHER)
            .request_grant(group, Epoch(0), false)
            .expect("answer")
    });
    std::thread::sleep(Duration::from_millis(200));
    let mine = p.request_grant(group, Epoch(0), true).expect("answer");
    assert_eq!(mine, GrantOutcome::Granted { epoch: Epoch(1) });
    let theirs = other.join().expect("thread");
    assert!(
        t0.elapsed() < Duration::from_millis(GRACE_MS),
        "decided before the grace"
    );
    match theirs {
        GrantOutcome::Denied {
            reason,
            holder,
            epoch,
            ..
        } => {
            assert_eq!(reason, DenyReason::Held);
            assert_eq!(holder, Some(site(PREFERRED)));
            assert_eq!(epoch, Epoch(1));
        }
        other => panic!("the non-preferred site must lose: {other:?}"),
    }
    w.stop();
}

#[test]
fn the_other_site_wins_once_the_preferred_one_is_silent_past_the_grace() {
    const GRACE_MS: u64 = 400;
    let dir = tempfile::tempdir().expect("tempdir");
    let w = start(&state_path(&dir), any_port(), GRACE_MS);
    let group = GroupId(42);
    let mut p = client(w.addr, PREFERRED);
    // Timed from before the heartbeat is sent: the witness hears it later, so its grace ends
    // at least GRACE_MS after this (timed from the answer's arrival instead, a slow answer made
    // the grant look early).
    let last_heard = Instant::now();
    preferred_heartbeat(&mut p, group);
    // The preferred site dies here (says nothing more).
    let mut o = client(w.addr, OTHER);
    let got = o.request_grant(group, Epoch(0), false).expect("answer");
    let waited = last_heard.elapsed();
    assert_eq!(got, GrantOutcome::Granted { epoch: Epoch(1) });
    assert!(
        waited >= Duration::from_millis(GRACE_MS - 20),
        "granted after {waited:?}, before the preferred site's grace ran out"
    );
    assert!(
        waited < Duration::from_millis(GRACE_MS + 600),
        "took {waited:?}"
    );
    // The preferred site comes back: it is denied, the holder is the other site.
    let back = p.request_grant(group, Epoch(0), true).expect("answer");
    assert!(matches!(
        back,
        GrantOutcome::Denied { reason: DenyReason::Held, holder: Some(h), epoch: Epoch(1), .. }
            if h == site(OTHER)
    ));
    w.stop();
}

/// Restarts a witness on the same address and state file.
fn restart(w: Running, state: &std::path::Path, grace_ms: u64) -> Running {
    let addr = w.addr;
    drop(w.stop());
    start(state, addr, grace_ms)
}

#[test]
fn a_witness_restart_after_a_grant_makes_no_second_grant() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = state_path(&dir);
    let w = start(&state, any_port(), 300);
    let group = GroupId(9);
    let mut p = client(w.addr, PREFERRED);
    let mut o = client(w.addr, OTHER);
    preferred_heartbeat(&mut p, group);
    // Failover: the preferred site is gone, the other wins after the grace.
    assert_eq!(
        o.request_grant(group, Epoch(0), false).expect("answer"),
        GrantOutcome::Granted { epoch: Epoch(1) }
    );
    let w = restart(w, &state, 300);
    // The preferred site returns while the failover is still on: denied, the same holder.
    let back = p.request_grant(group, Epoch(0), true).expect("answer");
    assert!(matches!(
        back,
        GrantOutcome::Denied { reason: DenyReason::Held, holder: Some(h), epoch: Epoch(1), .. }
            if h == site(OTHER)
    ));
    // The holder asking again is re-answered with the same epoch: not a second grant.
    assert_eq!(
        o.request_grant(group, Epoch(1), false).expect("answer"),
        GrantOutcome::Granted { epoch: Epoch(1) }
    );
    let w = w.stop();
    let rec = w.table().groups[&group];
    assert_eq!((rec.epoch, rec.holder), (Epoch(1), Some(site(OTHER))));
}

#[test]
fn a_witness_restart_in_the_middle_of_a_tie_still_grants_once() {
    // Long, so that a loaded machine cannot let it run out before the preferred site's
    // request (which a fast one makes about 250 ms after the other site's).
    const GRACE_MS: u64 = 5000;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = state_path(&dir);
    let w = start(&state, any_port(), GRACE_MS);
    let addr = w.addr;
    let group = GroupId(10);
    let mut p = client(addr, PREFERRED);
    preferred_heartbeat(&mut p, group);
    // Both sites lost each other and both ask; the non-preferred one first.
    let other = std::thread::spawn(move || {
        let mut c = client(addr, OTHER);
        c.set_timeout(Duration::from_secs(5));
        c.request_grant(group, Epoch(0), false).expect("answer")
    });
    std::thread::sleep(Duration::from_millis(150));
    // The witness restarts while the other site is waiting out the tie.
    let w = restart(w, &state, GRACE_MS);
    std::thread::sleep(Duration::from_millis(100));
    let mine = p.request_grant(group, Epoch(0), true).expect("answer");
    let theirs = other.join().expect("thread");
    let grants = [mine, theirs]
        .iter()
        .filter(|o| matches!(o, GrantOutcome::Granted { .. }))
        .count();
    assert_eq!(grants, 1, "exactly one grant: {mine:?} / {theirs:?}");
    assert_eq!(
        mine,
        GrantOutcome::Granted { epoch: Epoch(1) },
        "the preferred site, alive, wins"
    );
    let w: Witness = w.stop();
    assert_eq!(w.table().groups[&group].holder, Some(site(PREFERRED)));
}

#[test]
fn a_corrupt_or_missing_state_file_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = state_path(&dir);
    let w = start(&state, any_port(), 100);
    let mut o = client(w.addr, OTHER);
    assert!(matches!(
        o.request_grant(GroupId(1), Epoch(0), false)
            .expect("answer"),
        GrantOutcome::Granted { .. }
    ));
    drop(w.stop());
    let good = std::fs::read(&state).expect("state file");
    for at in [0, 9, 20, 40, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 0x04;
        std::fs::write(&state, &bad).expect("write");
        // `init` does not make a corrupt file acceptable.
        let err = Witness::open(config(&state, any_port(), 100))
            .err()
            .unwrap_or_else(|| panic!("started with byte {at} corrupted"));
        let text = format!("{err}");
        assert!(text.contains("corrupt"), "{text}");
    }
    std::fs::write(&state, &good[..good.len() - 5]).expect("write");
    assert!(Witness::open(config(&state, any_port(), 100)).is_err());
    std::fs::remove_file(&state).expect("rm");
    let mut cfg = config(&state, any_port(), 100);
    cfg.init = false;
    let err = Witness::open(cfg)
        .err()
        .expect("missing file refused without init");
    assert!(format!("{err}").contains("--init"));
}

/// A tie that lasts until the call's deadline (the preferred site alive and beating, never
/// asking) ends in `ClientError::TieWait` naming the preferred site: not a denial (a
/// retransmission may have been granted once the preferred site's grace ended, its answer
/// lost: the caller must treat the call as unanswered and watch the witness's word, as the
/// failover thread does with every error), and not a plain timeout (the witness answered every
/// datagram). Before, it ended in `Timeout`, so the site logged "neither the peer nor the
/// witness is reachable", and `GrantOutcome::Denied`'s doc promised a TIE_WAIT denial.
#[test]
fn a_tie_lasting_until_the_deadline_is_reported_as_a_tie() {
    const GRACE_MS: u64 = 60_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let w = start(&state_path(&dir), any_port(), GRACE_MS);
    let group = GroupId::from_name("vg-tie-deadline");
    let mut p = client(w.addr, PREFERRED);
    preferred_heartbeat(&mut p, group);
    let mut o = client(w.addr, OTHER);
    o.set_timeout(Duration::from_millis(700));
    let t0 = Instant::now();
    match o.request_grant(group, Epoch(0), false) {
        Err(twinblk_witness::ClientError::TieWait { preferred, .. }) => {
            assert_eq!(preferred, PREFERRED)
        }
        other => panic!("{other:?}"),
    }
    assert!(t0.elapsed() >= Duration::from_millis(700));
    w.stop();
}
