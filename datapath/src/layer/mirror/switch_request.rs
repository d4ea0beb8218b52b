//! Asking a volume's engine for a planned switchover and following it, from a thread off the
//! reactors (the control socket's `mirror_switchover`, the iSCSI front end's SET TARGET PORT
//! GROUPS): the steps both use, on the engine's published [`MirrorStats`] only
//! (docs/mirror-protocol.md, "Leadership and planned switchover").
//!
//! Model: a request is one store into `switch_req` that the engine takes at its next tick;
//! its outcome is read back from the term, the leadership and the failure counter, never by
//! waiting on the engine.

use super::stats::{MirrorStats, SWITCH_CANCEL, SWITCH_GIVE, SWITCH_TAKE};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// How long [`progress`] waits, once the caller's wait ran out during the leader's drain, for
/// the engine to roll the drain back or finish its handover (it ticks every 10 ms at most).
const CANCEL_WAIT: Duration = Duration::from_secs(2);

/// Refuse (with the reason) unless volume `name`'s pair is up and in sync at this site and no
/// switchover runs: a switchover copies nothing. `leader`: the configured role.
pub fn refuse_unless_in_sync(stats: &MirrorStats, name: &str, leader: bool) -> Result<(), String> {
    let s = stats.snapshot(name, leader);
    if s.state != "up" || s.dirty_bytes != 0 || s.resync_running || s.switchover.is_some() {
        return Err(format!(
            "volume {:?} is not up and in sync at this site (state {}, dirty {} bytes{}{}): a switchover needs both sites mirroring in sync",
            s.volume,
            s.state,
            s.dirty_bytes,
            if s.resync_running {
                ", a resync runs"
            } else {
                ""
            },
            s.switchover
                .map(|p| format!(", a switchover is under way ({p})"))
                .unwrap_or_default()
        ));
    }
    Ok(())
}

/// A switchover handed to a volume's engine ([`request`]), to follow with [`progress`].
#[derive(Clone, Copy, Debug)]
pub struct Request {
    /// The term when it was asked.
    term: u64,
    /// The engine's failure count when it was asked.
    failures: u64,
    /// This site led when it was asked.
    pub before: bool,
    /// The leadership is to come to this site.
    to_me: bool,
}

/// Where a [`Request`] is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Not decided yet.
    Waiting,
    /// The named site leads, at this term.
    Moved {
        /// The new term.
        term: u64,
    },
    /// Refused, rolled back, or no answer within the wait (the request was withdrawn).
    Failed(String),
}

/// Ask the volume's engine (at its next tick) to move the leadership here (`to_me`) or to the
/// peer; `None` when the named site leads already (nothing asked). `leader`: the configured
/// role (until the engine publishes its own).
pub fn request(stats: &MirrorStats, leader: bool, to_me: bool) -> Option<Request> {
    let leads = stats.leads().unwrap_or(leader);
    if leads == to_me {
        return None;
    }
    let r = Request {
        term: stats.term.load(Relaxed),
        failures: stats.switch_failures.load(Relaxed),
        before: leads,
        to_me,
    };
    stats
        .switch_req
        .store(if leads { SWITCH_GIVE } else { SWITCH_TAKE }, Relaxed);
    Some(r)
}

/// How request `r` of volume `name` stands (`leader`: the configured role); `expired`: the
/// caller's wait (`wait` long) is over, so a request still undecided is withdrawn and failed.
pub fn progress(
    stats: &MirrorStats,
    r: &Request,
    name: &str,
    leader: bool,
    expired: bool,
    wait: Duration,
) -> Progress {
    let term = stats.term.load(Relaxed);
    if term > r.term && stats.leads() == Some(r.to_me) {
        // Moved; wait a little for the old leader's confirmation (SWITCH_ACK).
        return match stats.snapshot(name, leader).switchover {
            None => Progress::Moved { term },
            // The old leader's "follower of the new term" is not on disk yet: no SWITCH has
            // gone, and a crash now restarts this site as the leader. Not completed (before,
            // answered moved: test `it::handing`); it goes on once the state is written.
            Some("handing") if expired => Progress::Failed(format!(
                "this site handed the leadership over, but its new role (follower of term {term}) is not on disk yet: the state write has not finished within {:.1} s; SWITCH goes once it has, or, the link lost meanwhile, the next session makes the peer the leader (`mirror_status` `switchover` says `handing` until then)",
                wait.as_secs_f64()
            )),
            _ if expired => Progress::Moved { term },
            _ => Progress::Waiting,
        };
    }
    if stats.switch_failures.load(Relaxed) != r.failures {
        return Progress::Failed(stats.switch_error().unwrap_or_else(|| "failed".into()));
    }
    if expired {
        stats.switch_req.store(0, Relaxed);
        match stats.snapshot(name, leader).switchover {
            Some("asked") => {
                // The leader never answered the ask (lost, or ignored: see its status).
                stats.set_switch_phase(None);
            }
            Some("draining") => {
                // The drain would go on past the answer (up to its own limit) and could hand
                // over after it said "not completed": rolled back, and the answer is what
                // became of it (a handover made first stands).
                stats.switch_req.store(SWITCH_CANCEL, Relaxed);
                let t = Instant::now();
                while t.elapsed() < CANCEL_WAIT {
                    if stats.term.load(Relaxed) > r.term && stats.leads() == Some(r.to_me) {
                        return Progress::Moved {
                            term: stats.term.load(Relaxed),
                        };
                    }
                    if stats.switch_failures.load(Relaxed) != r.failures {
                        return Progress::Failed(
                            stats.switch_error().unwrap_or_else(|| "rolled back".into()),
                        );
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            _ => {}
        }
        return Progress::Failed(format!(
            "no switchover within {:.1} s (the leader's `mirror_status` field `last_switchover_error` may say why)",
            wait.as_secs_f64()
        ));
    }
    Progress::Waiting
}
