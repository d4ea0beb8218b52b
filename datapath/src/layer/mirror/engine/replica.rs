//! Replica states and the session decision.
//!
//! Model: each site tells the other its *replica state* in HELLO/WELCOME (the header's `id`):
//! 0 in sync (or just started from an in-sync state), 1 survivor, 2 fenced, 3 resyncing,
//! 4 new (docs/mirror-protocol.md, the session table). [`decide`] is a pure function of both
//! states (and, to break the tie between two fenced sites, whether this site leads the
//! volume) that says what the session does at this site; the engine carries it out.
//!
//! Invariants:
//! - Exactly one side of a resync is the source: `decide(a, b, l)` is [`Session::SendAll`],
//!   [`Session::Resync`] or [`Session::Reconcile`] exactly when `decide(b, a, !l)` is
//!   [`Session::Receive`].
//! - Two survivors never serve together ([`Session::SplitBrain`]).
//! - Every pair a running pair of sites can reach is decided: a pair in which no site served
//!   alone (in sync, fenced) reconciles from the in-sync site, or from the leader when both
//!   fenced. A resync target (3) facing a fenced peer (2) receives everything from it: its
//!   source can only have been that peer (there are two sites), it fenced after the copy
//!   began (a fenced site sends nothing), and a target never serves nor asks the witness, so
//!   every write acknowledged since was acknowledged there (the fence failed only what it
//!   held unanswered). Refused ([`Session::Refuse`]) only where no replica is known to hold
//!   every acknowledged write: a new replica facing anything but an in-sync, new or surviving
//!   peer, two resync targets, and unknown states.

pub use crate::layer::mirror::mode::Mode;

/// A replica state's name, for logs.
pub fn state_name(s: u32) -> &'static str {
    match s {
        0 => "in sync",
        1 => "survivor",
        2 => "fenced",
        3 => "resyncing",
        5 => "in sync, stopped uncleanly",
        6 => "in sync, stopped uncleanly, host restarted",
        _ => "new",
    }
}

/// The replica state of a site in `mode` (`new_replica`: never in sync yet; `half_copied`:
/// restored fenced from the middle of a resync it received, which says 3 again).
pub fn replica_state(mode: Mode, new_replica: bool, half_copied: bool) -> u32 {
    match mode {
        Mode::Waiting if new_replica => 4,
        Mode::Mirroring | Mode::Waiting => 0,
        Mode::Survivor => 1,
        Mode::Fenced if half_copied => 3,
        Mode::Fenced => 2,
        Mode::Resyncing => 3,
    }
}

/// What a new session does at this site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Session {
    /// Both in sync (or both new and empty): mirror.
    InSync,
    /// The peer is new, or its resync from here ended without its RESYNC_DONE: this site
    /// becomes survivor and sends every region ever written.
    SendAll,
    /// This site is the survivor: resync the peer with the dirty regions (and every region
    /// ever written too when the peer is new).
    Resync {
        /// The peer is a new, empty replica.
        everything_written: bool,
    },
    /// Neither site served alone (this one in sync and the peer fenced, or both fenced and this
    /// site the leader): this replica holds every acknowledged write; serve (without a grant:
    /// the peer serves nothing until resynced) and copy the unconfirmed regions of both sites
    /// (this site's suspect ones and the peer's list) to the peer. Also the session after a
    /// site stopped uncleanly while in sync (replica state 5, `actlog.rs`, `decide_session`):
    /// the site that kept running (or the leader, when both restarted) is the source.
    Reconcile,
    /// The peer's replica wins: receive its resync (no I/O here until done).
    Receive,
    /// Both claim to be the survivor: refused.
    SplitBrain,
    /// No survivor to resync from: refused.
    Refuse,
}

/// The session of a site in replica state `me` whose peer is in state `peer`; `leader`: this
/// site leads the volume.
pub fn decide(me: u32, peer: u32, leader: bool) -> Session {
    match (me, peer) {
        (0, 0) | (4, 4) => Session::InSync,
        (0, 4) | (0, 3) | (2, 3) => Session::SendAll,
        (1, 1) => Session::SplitBrain,
        (1, p) => Session::Resync {
            everything_written: p == 4,
        },
        (0, 2) => Session::Reconcile,
        (2, 2) if leader => Session::Reconcile,
        (_, 1) | (4, 0) | (3, 0) | (3, 2) | (2, 0) | (2, 2) => Session::Receive,
        _ => Session::Refuse,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Session::*;

    /// The session table of docs/mirror-protocol.md, every pair (5 and 6: unknown states a
    /// peer might send).
    #[test]
    fn the_session_decision_follows_the_table_for_every_pair_of_states() {
        const R: Session = Resync {
            everything_written: false,
        };
        const RW: Session = Resync {
            everything_written: true,
        };
        // Rows: this site 0..=6; columns: the peer 0..=6 (this site the leader; a follower
        // differs only in (2, 2): Receive).
        let table = [
            [InSync, Receive, Reconcile, SendAll, SendAll, Refuse, Refuse],
            [R, SplitBrain, R, R, RW, R, R],
            [Receive, Receive, Reconcile, SendAll, Refuse, Refuse, Refuse],
            [Receive, Receive, Receive, Refuse, Refuse, Refuse, Refuse],
            [Receive, Receive, Refuse, Refuse, InSync, Refuse, Refuse],
            [Refuse, Receive, Refuse, Refuse, Refuse, Refuse, Refuse],
            [Refuse, Receive, Refuse, Refuse, Refuse, Refuse, Refuse],
        ];
        for (me, row) in table.iter().enumerate() {
            for (peer, want) in row.iter().enumerate() {
                assert_eq!(
                    decide(me as u32, peer as u32, true),
                    *want,
                    "this site {me}, peer {peer}"
                );
                let follower = if (me, peer) == (2, 2) { Receive } else { *want };
                assert_eq!(decide(me as u32, peer as u32, false), follower);
            }
        }
        // One source per resync, and both sides agree on mirroring and on refusing.
        for me in 0..7 {
            for peer in 0..7 {
                for leader in [true, false] {
                    let (a, b) = (decide(me, peer, leader), decide(peer, me, !leader));
                    let source = matches!(a, SendAll | Resync { .. } | Reconcile);
                    assert_eq!(source, b == Receive, "{me} {peer}: {a:?} / {b:?}");
                    assert_eq!(a == InSync, b == InSync, "{me} {peer}");
                    assert_eq!(a == SplitBrain, b == SplitBrain, "{me} {peer}");
                    assert_eq!(a == Refuse, b == Refuse, "{me} {peer}");
                }
            }
        }
    }

    #[test]
    fn a_mode_round_trips_through_its_number() {
        for m in [
            Mode::Mirroring,
            Mode::Survivor,
            Mode::Fenced,
            Mode::Resyncing,
            Mode::Waiting,
        ] {
            assert_eq!(Mode::from_u8(m as u8), Some(m));
        }
        assert_eq!(Mode::from_u8(5), None);
    }

    #[test]
    fn replica_states_of_modes() {
        assert_eq!(replica_state(Mode::Waiting, true, false), 4);
        assert_eq!(replica_state(Mode::Waiting, false, false), 0);
        assert_eq!(replica_state(Mode::Mirroring, true, false), 0);
        assert_eq!(replica_state(Mode::Survivor, false, false), 1);
        assert_eq!(replica_state(Mode::Fenced, false, false), 2);
        assert_eq!(replica_state(Mode::Resyncing, false, false), 3);
        assert_eq!(replica_state(Mode::Fenced, false, true), 3);
        assert_eq!(state_name(7), "new");
    }
}
