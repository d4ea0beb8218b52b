//! Two sites racing for the same group, many times: exactly one grant per epoch.

use std::sync::{Arc, Barrier};

use twinblk_witness::{DenyReason, Epoch, GrantOutcome, GroupId, ReleaseOutcome};

use crate::harness::*;

const ROUNDS: u64 = 150;

#[test]
fn two_sites_racing_get_exactly_one_grant_per_epoch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = start(&state_path(&dir), any_port(), 1000);
    let group = GroupId(7);
    let barrier = Arc::new(Barrier::new(2));
    let threads: Vec<_> = [1u32, 2]
        .into_iter()
        .map(|s| {
            let barrier = Arc::clone(&barrier);
            let addr = w.addr;
            std::thread::spawn(move || {
                let mut c = client(addr, s);
                let mut known = Epoch(0);
                let mut outcomes = Vec::new();
                for _ in 0..ROUNDS {
                    barrier.wait();
                    // Neither site claims preference: a pure race, first request wins.
                    let o = c.request_grant(group, known, false).expect("answer");
                    outcomes.push(o);
                    barrier.wait();
                    if let GrantOutcome::Granted { epoch } = o {
                        let r = c.release(group, epoch).expect("release answer");
                        assert!(matches!(r, ReleaseOutcome::Released(v) if v.holder.is_none()));
                    }
                    barrier.wait();
                    known = match o {
                        GrantOutcome::Granted { epoch } | GrantOutcome::Denied { epoch, .. } => {
                            epoch
                        }
                    };
                }
                outcomes
            })
        })
        .collect();
    let results: Vec<Vec<GrantOutcome>> = threads
        .into_iter()
        .map(|t| t.join().expect("site thread"))
        .collect();
    let mut wins = [0u64; 2];
    assert!(results.iter().all(|r| r.len() == ROUNDS as usize));
    for (round, (&a, &b)) in results[0].iter().zip(&results[1]).enumerate() {
        let epoch = Epoch(round as u64 + 1);
        match (a, b) {
            (
                GrantOutcome::Granted { epoch: e },
                GrantOutcome::Denied {
                    reason,
                    holder,
                    epoch: d,
                    ..
                },
            )
            | (
                GrantOutcome::Denied {
                    reason,
                    holder,
                    epoch: d,
                    ..
                },
                GrantOutcome::Granted { epoch: e },
            ) => {
                assert_eq!(e, epoch, "round {round}: one grant, the next epoch");
                assert_eq!(
                    d, epoch,
                    "round {round}: the loser is told the winner's epoch"
                );
                assert_eq!(reason, DenyReason::Held);
                let winner = if matches!(a, GrantOutcome::Granted { .. }) {
                    1
                } else {
                    2
                };
                assert_eq!(
                    holder,
                    Some(site(winner)),
                    "round {round}: loser told the holder"
                );
                wins[winner as usize - 1] += 1;
            }
            other => panic!("round {round}: not exactly one grant: {other:?}"),
        }
    }
    let w = w.stop();
    let rec = w.table().groups[&group];
    assert_eq!(rec.epoch, Epoch(ROUNDS));
    assert_eq!(rec.holder, None);
    println!(
        "race: {ROUNDS} rounds, site 1 won {}, site 2 won {}",
        wins[0], wins[1]
    );
}
