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
pub use crate::layer::mirror::switch_request::{
    Progress, Request, progress, refuse_unless_in_sync, request,
};
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
