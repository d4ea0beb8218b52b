//! `mirror_switchover`: a planned move of the leadership of a volume, or of every volume of a
//! group, to a named site (docs/control.md; the exchange is docs/mirror-protocol.md,
//! "Leadership and planned switchover").
//!
//! Model: the control thread checks the request (the volume or group exists and is
//! mirrored, the site is this one or its peer, the pair is up and in sync), then hands each
//! volume's engine a request through its published stats (`MirrorStats::switch_req`, taken
//! at the engine's next tick) and polls the stats until the leadership term moved to the
//! named site, a failure was recorded, or the wait ran out. It never touches a reactor.
//! The steps ([`refuse_unless_in_sync`], [`request`], [`progress`]) are also what iSCSI's SET
//! TARGET PORT GROUPS runs, from a helper thread (`frontend::iscsi::conn::alua`).
//!
//! Invariant: a refusal changes nothing; an answer of success means the named site leads the
//! volume (at this site's knowledge, which is the protocol's: the term moved).

use super::ControlCx;
use crate::control::config::Config;
use crate::layer::mirror::MirrorInfo;
use crate::layer::mirror::stats::{MirrorStats, SWITCH_GIVE, SWITCH_TAKE};
use serde_json::{Value, json};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// JSON-RPC error code of a switchover refused because the pair is not in sync.
pub const NOT_IN_SYNC: i64 = -32010;
/// JSON-RPC error code of a switchover that started but did not complete (rolled back, or
/// no answer within the wait).
pub const NOT_COMPLETED: i64 = -32011;
/// JSON-RPC error code of bad parameters (unknown volume, group or site).
pub const BAD_PARAMS: i64 = -32602;

/// How long the call waits by default.
const WAIT: Duration = Duration::from_secs(10);

/// `mirror_switchover {"volume": NAME | "group": NAME, "to": SITE, "wait_s": N}`.
pub fn switchover(
    params: Option<&Value>,
    shared: &ControlCx,
    cfg: &Config,
) -> Result<Value, (i64, String)> {
    let bad = |m: String| (BAD_PARAMS, m);
    let usage = "params: {\"volume\": NAME} or {\"group\": NAME}, and \"to\": SITE";
    let p = params.ok_or_else(|| bad(usage.into()))?;
    let Some(m) = cfg.mirror.as_ref() else {
        return Err(bad("this site has no [mirror] section".into()));
    };
    let to = p
        .get("to")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(usage.into()))?;
    let to_me = if to == m.site {
        true
    } else if to == m.peer_site {
        false
    } else {
        return Err(bad(format!(
            "no site named {to:?}: the sites are {:?} (this one) and {:?}",
            m.site, m.peer_site
        )));
    };
    let wait = match p.get("wait_s") {
        None => WAIT,
        Some(v) => Duration::from_secs_f64(
            v.as_f64()
                .filter(|s| (0.1..=600.0).contains(s))
                .ok_or_else(|| bad("wait_s must be 0.1 to 600 seconds".into()))?,
        ),
    };
    let vols: Vec<&MirrorInfo> = match (
        p.get("volume").and_then(Value::as_str),
        p.get("group").and_then(Value::as_str),
    ) {
        (Some(name), None) => {
            let vol = super::volume_index(shared, name).map_err(bad)?;
            vec![super::mirror_of(shared, vol, name).map_err(bad)?]
        }
        (None, Some(g)) => {
            let v: Vec<&MirrorInfo> = shared.mirrors.iter().filter(|m| m.group == g).collect();
            if v.is_empty() {
                return Err(bad(format!("no mirrored volume in a group named {g:?}")));
            }
            v
        }
        _ => return Err(bad(usage.into())),
    };
    let name = |mi: &MirrorInfo| shared.rt.volumes.name(mi.vol);
    // Every volume must be up and in sync first: a switchover copies nothing.
    for mi in &vols {
        refuse_unless_in_sync(&mi.stats, &name(mi), mi.leader).map_err(|m| (NOT_IN_SYNC, m))?;
    }
    let mut pending = Vec::new();
    let mut out = Vec::new();
    for mi in &vols {
        match request(&mi.stats, mi.leader, to_me) {
            None => {
                let term = mi.stats.term.load(Relaxed);
                out.push(json!({"volume": name(mi), "leader": to, "term": term, "changed": false}));
            }
            Some(r) => {
                tracing::info!(volume = %name(mi), to, "mirror: operator asked for a switchover");
                pending.push((*mi, r));
            }
        }
    }
    let deadline = Instant::now() + wait;
    let mut errors = Vec::new();
    while !pending.is_empty() {
        let now = Instant::now();
        pending.retain(|(mi, r)| {
            match progress(&mi.stats, r, &name(mi), mi.leader, now >= deadline, wait) {
                Progress::Waiting => true,
                Progress::Moved { term } => {
                    out.push(json!({
                        "volume": name(mi), "leader": to, "term": term, "changed": true,
                        "previous_leader": if r.before { &m.site } else { &m.peer_site },
                    }));
                    false
                }
                Progress::Failed(why) => {
                    errors.push(format!("{}: {why}", name(mi)));
                    false
                }
            }
        });
        if !pending.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    if !errors.is_empty() {
        return Err((
            NOT_COMPLETED,
            format!("switchover to {to} not completed: {}", errors.join("; ")),
        ));
    }
    Ok(json!({"to": to, "volumes": out}))
}

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
        if stats.snapshot(name, leader).switchover.is_none() || expired {
            return Progress::Moved { term };
        }
        return Progress::Waiting;
    }
    if stats.switch_failures.load(Relaxed) != r.failures {
        return Progress::Failed(stats.switch_error().unwrap_or_else(|| "failed".into()));
    }
    if expired {
        stats.switch_req.store(0, Relaxed);
        if stats.snapshot(name, leader).switchover == Some("asked") {
            // The leader never answered the ask (lost, or ignored: see its status).
            stats.set_switch_phase(None);
        }
        return Progress::Failed(format!(
            "no switchover within {:.1} s (the leader's `mirror_status` field `last_switchover_error` may say why)",
            wait.as_secs_f64()
        ));
    }
    Progress::Waiting
}
