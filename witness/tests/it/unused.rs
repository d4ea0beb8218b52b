//! An unused release (docs/witness-protocol.md, "An unused release"): a site whose grant's
//! answer was lost and whose host restarted gives the grant back never served on; the peer,
//! denied while it was held, asks again at the epoch it knows (the one before that grant).
//! With a plain release the witness refuses it as stale and nobody serves (the limit in
//! docs/mirror-protocol.md); with `UNUSED` it is granted, once, and only to the peer.

use std::time::Duration;

use twinblk_witness::{DenyReason, Epoch, GrantOutcome, GroupId, ReleaseOutcome, WitnessClient};

use crate::harness::*;

const A: u32 = 1;
const B: u32 = 2;

fn denied(o: GrantOutcome) -> Option<DenyReason> {
    match o {
        GrantOutcome::Denied { reason, .. } => Some(reason),
        GrantOutcome::Granted { .. } => None,
    }
}

/// Both sites in sync at epoch 1; site A then granted epoch 2, its answer taken as lost; site
/// B denied while A holds it; A gives epoch 2 back, `unused` or not.
fn given_back(
    a: &mut WitnessClient,
    b: &mut WitnessClient,
    group: GroupId,
    unused: bool,
) -> ReleaseOutcome {
    let g = |c: &mut WitnessClient, k| c.request_grant(group, Epoch(k), false).expect("answer");
    assert_eq!(g(a, 0), GrantOutcome::Granted { epoch: Epoch(1) });
    assert!(matches!(
        a.release(group, Epoch(1)),
        Ok(ReleaseOutcome::Released(_))
    ));
    assert_eq!(g(a, 1), GrantOutcome::Granted { epoch: Epoch(2) });
    assert_eq!(denied(g(b, 1)), Some(DenyReason::Held));
    let out = if unused {
        a.release_unused(group, Epoch(2))
    } else {
        a.release(group, Epoch(2))
    };
    out.expect("release answered")
}

fn clients(w: &Running) -> (WitnessClient, WitnessClient) {
    let (mut a, mut b) = (client(w.addr, A), client(w.addr, B));
    // Patient: other tests share this machine.
    for c in [&mut a, &mut b] {
        c.set_timeout(Duration::from_secs(10));
    }
    (a, b)
}

#[test]
fn after_a_plain_give_back_the_peer_is_refused_as_stale() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = start(&state_path(&dir), any_port(), 0);
    let (mut a, mut b) = clients(&w);
    let group = GroupId::from_name("vg-plain");
    assert!(matches!(
        given_back(&mut a, &mut b, group, false),
        ReleaseOutcome::Released(_)
    ));
    let got = b.request_grant(group, Epoch(1), false).expect("answer");
    assert_eq!(denied(got), Some(DenyReason::Stale), "{got:?}");
    w.stop();
}

#[test]
fn after_an_unused_give_back_the_peer_is_granted_at_the_epoch_before_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = start(&state_path(&dir), any_port(), 0);
    let (mut a, mut b) = clients(&w);
    let group = GroupId::from_name("vg-unused");
    match given_back(&mut a, &mut b, group, true) {
        ReleaseOutcome::Released(v) => assert_eq!((v.epoch, v.holder), (Epoch(2), None)),
        other => panic!("{other:?}"),
    }
    // The releasing site itself (its device may have lost writes the peer kept) is refused.
    let got = a.request_grant(group, Epoch(1), false).expect("answer");
    assert_eq!(denied(got), Some(DenyReason::Stale), "{got:?}");
    // The peer is granted the next epoch.
    let got = b.request_grant(group, Epoch(1), false).expect("answer");
    assert_eq!(got, GrantOutcome::Granted { epoch: Epoch(3) });
    let got = a.request_grant(group, Epoch(2), false).expect("answer");
    assert_eq!(denied(got), Some(DenyReason::Held), "{got:?}");
    // Once: given back plain, the epoch before the unused grant is stale again.
    assert!(matches!(
        b.release(group, Epoch(3)),
        Ok(ReleaseOutcome::Released(_))
    ));
    let got = b.request_grant(group, Epoch(1), false).expect("answer");
    assert_eq!(denied(got), Some(DenyReason::Stale), "{got:?}");
    w.stop();
}

/// The mark is in the state file (version 2 while one stands): a witness restarted between
/// the give-back and the peer's request still grants the peer. Failed before (the mark was in
/// memory only): the peer was refused as stale and nobody served.
#[test]
fn a_witness_restarted_after_an_unused_give_back_still_grants_the_peer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = start(&state_path(&dir), any_port(), 0);
    let (mut a, mut b) = clients(&w);
    let group = GroupId::from_name("vg-restart");
    given_back(&mut a, &mut b, group, true);
    let addr = w.addr;
    drop(w.stop());
    let w = start(&state_path(&dir), addr, 0);
    let got = a.request_grant(group, Epoch(1), false).expect("answer");
    assert_eq!(denied(got), Some(DenyReason::Stale), "{got:?}");
    let got = b.request_grant(group, Epoch(1), false).expect("answer");
    assert_eq!(got, GrantOutcome::Granted { epoch: Epoch(3) });
    w.stop();
}
