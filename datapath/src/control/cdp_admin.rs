//! CDP switched on and off per volume at run time: `cdp_enable`, `cdp_disable`
//! (docs/control.md; design: docs/cdp-format.md, "Enabling and disabling at run time").
//!
//! Model: the control thread (under the admin lock, one change at a time) drives the steps of
//! [`crate::layer::cdp::live`] across the reactors with [`Msg::Restack`], waiting for every
//! answer of one step before the next:
//! - on: the layer is opened off the reactors ([`CdpDevice::open_live`]: the directory's
//!   history is recovered and marked "not whole after its end"); the home reactor wraps its
//!   channel, then every other reactor; once every old stack's updates have finished the
//!   catch-up starts, and the answer comes when the gap record is durable (the history is
//!   whole again from it) or with the reason it could not be; that wait ([`Enabled::answer`])
//!   runs after the admin lock is released: the change is made, and other changes (also a
//!   `cdp_disable`, which abandons the catch-up) are served meanwhile;
//! - off: the home stamps the last time mark and stops journaling, the other reactors
//!   unwrap, the home unwraps once nothing is in flight (the segment is sealed, but over a
//!   `volatile_cache` test device). The history
//!   stays listed (`cdp_status`: journal "off") and readable by views and restores.
//!
//! Invariants: the volume is served throughout (a restack happens between two requests on
//! each reactor; nothing is closed); a refused request changes nothing; a change lasts until
//! the daemon stops (the config file decides the next start), as every run-time change. A
//! `cdp_disable` that failed part way can be asked again: while the layer is still in the
//! served stack it is not "off" for `cdp_disable` (whose steps do nothing where they were
//! done) and `cdp_enable` is refused.
//! A mirrored volume's layer goes under the mirror (depth 1 of its stack: the mirror's
//! channels and engine keep their state and find the new layer below them), so it journals
//! every update this site applies to its replica, the peer's and resync's too. Each site
//! switches its own history on and off; the other site is not asked and does not change.
//! The device's stack is changed last (`BlockDevice::set_lower`), once every reactor's
//! channels were.

use super::ControlCx;
use super::admin::{AdminState, E_FAILED, E_IN_USE, Error, REACTOR_WAIT, bad};
use crate::bdev::BlockDevice;
use crate::bdev::volume::Volume;
use crate::control::config::{parse_age, parse_size};
use crate::layer::cdp::journal::SpareOf;
use crate::layer::cdp::live::{Disable, DisableStep, Enable};
use crate::layer::cdp::retain::{Retained, Retention};
use crate::layer::cdp::{CdpDevice, CdpInfo, CdpSettings, MIN_SEGMENT};
use crate::runtime::{Msg, Restack};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The CDP helper threads' lists, shared with the threads (they copy them each pass).
#[derive(Clone, Default)]
pub struct CdpLists {
    /// Journals whose next segment is prepared ahead.
    pub spares: Arc<Mutex<Vec<SpareOf>>>,
    /// Journals under retention.
    pub retained: Arc<Mutex<Vec<Retained>>>,
}

/// How long `cdp_enable` waits for the catch-up (journaling the whole volume again) before
/// it answers "still catching up" (`cdp_status` then shows `catching_up`), unless the
/// request's `wait` says otherwise (at most [`CATCHUP_WAIT_MAX`]).
const CATCHUP_WAIT: Duration = Duration::from_secs(120);

/// The longest `wait` a `cdp_enable` may ask for (the control socket serves one change at a
/// time meanwhile).
const CATCHUP_WAIT_MAX: f64 = 3600.0;

/// Until when a run-time switch lasts.
fn lasts() -> Value {
    json!(
        "until the daemon stops (run-time changes are not saved: the config file's [volume.cdp] decides at the next start)"
    )
}

/// Send `how(reactor)` to `reactors` and wait for every answer.
fn restack(
    cx: &ControlCx,
    vol: usize,
    volume: &Arc<Volume>,
    reactors: &[usize],
    how: impl Fn(usize) -> Box<dyn Restack>,
) -> Result<(), String> {
    let (tx, rx) = sync_channel(reactors.len().max(1));
    for &r in reactors {
        cx.rt.mailboxes[r].send(Msg::Restack {
            vol,
            volume: Arc::clone(volume),
            how: how(r),
            done: tx.clone(),
        });
    }
    drop(tx);
    let mut errors = Vec::new();
    let late = super::admin::wait_all(&rx, reactors.len(), |r| {
        if let Err(e) = r {
            errors.push(e);
        }
    });
    if late > 0 {
        errors.push(format!(
            "{late} reactor(s) did not answer within {} s",
            REACTOR_WAIT.as_secs()
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Whether the volume served now still has `cd` in its stack: a `cdp_disable` that failed
/// after the journal stopped leaves it there (the journal "off", the directory held) until
/// the request is asked again.
fn installed(v: &Volume, cd: &Arc<CdpDevice>) -> bool {
    let mut d = Some(Arc::clone(&v.device));
    while let Some(dev) = d {
        if std::ptr::addr_eq(Arc::as_ptr(&dev), Arc::as_ptr(cd)) {
            return true;
        }
        d = dev.lower();
    }
    false
}

/// Where a volume's CDP layer goes in its stack: under the mirror (depth 1) when the volume
/// is mirrored, on top (depth 0) otherwise.
fn depth(cx: &ControlCx, vol: usize) -> usize {
    usize::from(cx.mirrors.iter().any(|m| m.vol == vol))
}

/// The device `depth` layers down the stack of `v` (0: its top).
fn device_at(v: &Volume, depth: usize) -> Result<Arc<dyn BlockDevice>, Error> {
    let mut d = Arc::clone(&v.device);
    for _ in 0..depth {
        d = d.lower().ok_or_else(|| {
            (
                E_FAILED,
                format!(
                    "volume {:?}: its stack ({}) is not {depth} layer(s) deep",
                    v.name, v.info.kind
                ),
            )
        })?;
    }
    Ok(d)
}

/// The volume `v` as the device's stack now is (once its layers changed under the top).
fn republished(v: &Volume) -> Arc<Volume> {
    let mut nv = Volume::with_path(v.name.clone(), Arc::clone(&v.device), Arc::clone(&v.path));
    nv.peer_path = v.peer_path.clone();
    Arc::new(nv)
}

/// The served volume `name` and its CDP entry, if it has one.
fn target(cx: &ControlCx, p: &Value) -> Result<(usize, Arc<Volume>, Option<CdpInfo>), Error> {
    let name = super::admin::s(p, "volume")?;
    let (vol, v) = super::admin::volume(cx, name)?;
    let info = cx
        .cdp
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|c| c.vol == vol)
        .cloned();
    Ok((vol, v, info))
}

/// Refuse a directory that holds files but no history ([`names::refuse_foreign_files`]; the
/// daemon's start checks the config file's directories the same way).
///
/// [`names::refuse_foreign_files`]: crate::layer::cdp::names::refuse_foreign_files
fn refuse_foreign_files(dir: &std::path::Path) -> Result<(), Error> {
    crate::layer::cdp::names::refuse_foreign_files(dir).map_err(|e| bad(e.to_string()))
}

/// A `cdp_enable` whose change is made: what its answer waits for (the catch-up), without the
/// admin lock ([`Enabled::answer`]), so other changes are served meanwhile.
pub(super) struct Enabled {
    live: Arc<crate::layer::cdp::live::LiveStart>,
    wait: Duration,
    size: u64,
    r: Value,
    name: String,
    dir: PathBuf,
}

/// `cdp_enable {volume, dir?, segment_size?, retention_age?, retention_bytes?, prezero?,
/// sync?, group?, wait?}`: the change, under the admin lock; the answer comes from
/// [`Enabled::answer`], once the lock is released.
pub(super) fn cdp_enable(p: &Value, cx: &ControlCx, st: &mut AdminState) -> Result<Enabled, Error> {
    let (vol, v, info) = target(cx, p)?;
    let name = v.name.clone();
    if let Some(c) = info.as_ref().filter(|c| !c.stats.off.load(Relaxed)) {
        return Err(bad(format!(
            "CDP is already on for volume {name:?} (directory {}; cdp_status shows it)",
            c.dir.display()
        )));
    }
    if let Some(c) = info.as_ref().filter(|c| installed(&v, &c.device)) {
        return Err(bad(format!(
            "a cdp_disable of volume {name:?} did not finish (its journal is stopped, its layer still holds {}): ask cdp_disable again first",
            c.dir.display()
        )));
    }
    let conf = cx
        .volume_configs
        .iter()
        .find(|c| c.name == name)
        .and_then(|c| c.cdp.clone());
    let text = |k: &str| -> Result<Option<String>, Error> {
        match p.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(_) => Err(bad(format!("\"{k}\" must be a string"))),
        }
    };
    let dir = match (text("dir")?, &conf) {
        (Some(d), _) if !d.is_empty() => PathBuf::from(d),
        (_, Some(c)) => c.dir.clone(),
        _ => {
            return Err(bad(format!(
                "params need \"dir\": volume {name:?} has no [volume.cdp] section to take it from"
            )));
        }
    };
    if !dir.is_absolute() {
        return Err(bad(
            "\"dir\" must be an absolute path (the daemon's working directory is not yours)",
        ));
    }
    if let Some(o) = cx
        .cdp
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|c| c.vol != vol && crate::control::config::same_file(&c.dir, &dir))
    {
        return Err((
            E_IN_USE,
            format!(
                "directory {} holds the history of volume {:?}: give each volume its own",
                dir.display(),
                cx.rt.volumes.name(o.vol)
            ),
        ));
    }
    refuse_foreign_files(&dir)?;
    // A directory that holds a volume's backing file: the history's files (its base copy
    // `base.img`, its segments) would be that volume's blocks.
    if let Some((n, f)) = super::admin::volume_files(cx, st)
        .into_iter()
        .find(|(_, f)| crate::control::config::inside(f, &dir))
    {
        return Err((
            E_IN_USE,
            format!(
                "directory {} holds the backing file {} of volume {n:?}: give the history a directory of its own",
                dir.display(),
                f.display()
            ),
        ));
    }
    let segment_size = match text("segment_size")? {
        Some(t) => parse_size(&t).map_err(|e| bad(format!("segment_size: {e}")))?,
        None => conf.as_ref().map_or(64 << 20, |c| c.segment_size.0),
    };
    // The config file's bounds (Config::validate).
    if segment_size < MIN_SEGMENT || !segment_size.is_multiple_of(4096) || segment_size > 1 << 40 {
        return Err(bad(format!(
            "segment_size {segment_size}: give a multiple of 4096 from {MIN_SEGMENT} (4 MiB) to 1 TiB"
        )));
    }
    let age_ns = match text("retention_age")? {
        Some(t) => Some(parse_age(&t).map_err(|e| bad(format!("retention_age: {e}")))?),
        None => conf.as_ref().and_then(|c| c.retention_age_ns()),
    };
    let bytes = match text("retention_bytes")? {
        Some(t) => Some(parse_size(&t).map_err(|e| bad(format!("retention_bytes: {e}")))?),
        None => conf.as_ref().and_then(|c| c.retention_bytes.map(|b| b.0)),
    };
    if let Some(b) = bytes
        && b < 2 * segment_size
    {
        return Err(bad(format!(
            "retention_bytes {b} is below two segments ({}): the active segment is never consolidated",
            2 * segment_size
        )));
    }
    let prezero = match p.get("prezero") {
        None | Some(Value::Null) => conf.as_ref().is_some_and(|c| c.prezero),
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("\"prezero\" must be true or false")),
    };
    let mut sync = conf.as_ref().map(|c| c.sync_policy()).unwrap_or_default();
    if let Some(v) = p.get("sync").filter(|v| !v.is_null()) {
        // The config file's own names for it.
        let s: crate::control::config::CdpSync = serde_json::from_value(v.clone())
            .map_err(|_| bad("\"sync\" must be \"append\" or \"flush\""))?;
        sync.on_flush = s == crate::control::config::CdpSync::Flush;
    }
    let wait = match p.get("wait") {
        None | Some(Value::Null) => CATCHUP_WAIT,
        Some(Value::Number(n))
            if n.as_f64()
                .is_some_and(|w| (0.0..=CATCHUP_WAIT_MAX).contains(&w)) =>
        {
            Duration::from_secs_f64(n.as_f64().unwrap_or(0.0))
        }
        Some(_) => {
            return Err(bad(format!(
                "\"wait\" must be a number of seconds from 0 to {CATCHUP_WAIT_MAX}"
            )));
        }
    };
    let config = cx.volume_configs.iter().find(|c| c.name == name);
    let group = match p.get("group") {
        None | Some(Value::Null) => None,
        // A name, as the config file's `group` (a number is not taken for its text).
        Some(Value::String(g))
            if !g.is_empty() && g.len() <= 223 && !g.chars().any(char::is_control) =>
        {
            Some(g.clone())
        }
        Some(g) => {
            return Err(bad(format!(
                "\"group\" must be a group's name (1 to 223 bytes, no control characters), not {g}"
            )));
        }
    };
    let group = match group {
        Some(g) => g,
        None => config
            .and_then(|c| c.group.clone())
            .unwrap_or_else(|| name.clone()),
    };
    let depth = depth(cx, vol);
    let settings = CdpSettings {
        dir: dir.clone(),
        segment_size,
        // (The catch-up journals the whole volume: the file serves only the clean stop's sync.)
        seed: config
            .filter(|c| c.backend == crate::control::config::Backend::Uring)
            .and_then(|c| c.path.clone()),
        volatile: false,
        base_cache: config.is_some_and(|c| c.volatile_cache),
        prezero,
        sync,
        // Under the mirror: the mirror says when this site's replica is the volume.
        vouched: depth > 0,
    };
    let n = cx.rt.mailboxes.len();
    let home = vol % n;
    let below = device_at(&v, depth)?;
    let cd = Arc::new(
        CdpDevice::open_live(below, &settings, vol, home)
            .map_err(|e| (E_FAILED, format!("volume {name:?}: {e}; nothing changed")))?,
    );
    let _ = cd.mailboxes.set(cx.rt.mailboxes.clone());
    // On top, the layer is the volume's new device; under the mirror the top stays (its
    // stack is changed below once every reactor's channels are).
    let nv = if depth == 0 {
        let mut nv = Volume::with_path(
            name.clone(),
            Arc::clone(&cd) as Arc<dyn BlockDevice>,
            Arc::clone(&v.path),
        );
        nv.peer_path = v.peer_path.clone();
        Arc::new(nv)
    } else {
        Arc::clone(&v)
    };
    let enable = |_| {
        Box::new(Enable {
            dev: Arc::clone(&cd),
            depth,
        }) as Box<dyn Restack>
    };
    // The home first: from then on no update reaches the base unjournaled from a reactor
    // that hands updates over.
    if let Err(e) = restack(cx, vol, &nv, &[home], enable) {
        cd.release_lock();
        return Err((E_FAILED, format!("volume {name:?}: {e}; nothing changed")));
    }
    let others: Vec<usize> = (0..n).filter(|&r| r != home).collect();
    if let Err(e) = restack(cx, vol, &nv, &others, enable) {
        // Not expected (a reactor stopping); the home journals, the history stays "not
        // whole" (points after its end refused): say so.
        tracing::error!(volume = %name, error = %e, "cdp: switching on failed half way");
        return Err((
            E_FAILED,
            format!(
                "volume {name:?}: {e}; the home reactor journals but the history is not whole (points after its end are refused): cdp_disable, then try again"
            ),
        ));
    }
    let nv = if depth == 0 {
        nv
    } else {
        device_at(&v, depth - 1)?.set_lower(Arc::clone(&cd) as Arc<dyn BlockDevice>);
        republished(&v)
    };
    cx.rt.volumes.replace(vol, Arc::clone(&nv));
    let live = Arc::clone(cd.live.as_ref().expect("opened live"));
    live.go.store(true, Release);
    let entry = CdpInfo {
        vol,
        group: group.clone(),
        dir: dir.clone(),
        home,
        created: cd.created,
        stats: Arc::clone(&cd.stats),
        retention_age_ns: age_ns,
        device: Arc::clone(&cd),
    };
    {
        let mut list = cx.cdp.write().unwrap_or_else(|e| e.into_inner());
        list.retain(|c| c.vol != vol);
        list.push(entry);
    }
    cx.cdp_lists
        .spares
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(SpareOf {
            dir: dir.clone(),
            size: segment_size,
            spare: Arc::clone(&cd.spare),
        });
    if age_ns.is_some() || bytes.is_some() {
        cx.cdp_lists
            .retained
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Retained {
                dir: dir.clone(),
                retention: Retention { age_ns, bytes },
                stats: Arc::clone(&cd.stats),
                maps: Some(Arc::clone(&cd.spare.maps)),
            });
    }
    let r = json!({
        "volume": name,
        "dir": dir.display().to_string(),
        "group": group,
        "home_reactor": home,
        "lasts": lasts(),
    });
    Ok(Enabled {
        live,
        wait,
        size: v.info.size,
        r,
        name,
        dir,
    })
}

impl Enabled {
    /// Wait up to `wait` for the catch-up, then the answer (called without the admin lock:
    /// the change is made, only its answer waits).
    pub(super) fn answer(self) -> Result<Value, Error> {
        let Enabled {
            live,
            wait,
            size,
            mut r,
            name,
            dir,
        } = self;
        let t = Instant::now();
        while !live.whole.load(Acquire) && live.failed.get().is_none() && t.elapsed() < wait {
            std::thread::sleep(Duration::from_millis(5));
        }
        let after = live.after.load(Relaxed);
        let after_time = live.after_time.load(Relaxed);
        r["new_history"] = json!(after == 0);
        r["whole_until_seq"] = json!(after);
        r["whole_until_ns"] = json!(after_time);
        r["journaled_again_bytes"] = json!(live.done_bytes.load(Relaxed));
        r["held_behind_catchup"] = json!(live.held.load(Relaxed));
        if let Some(why) = live.failed.get() {
            tracing::error!(volume = %name, why, "cdp: switched on, but the catch-up failed");
            r["error"] = json!(why);
            return Err((
                E_FAILED,
                format!(
                    "volume {name:?}: journaling the volume again failed ({why}); the journal is stopped and points after sequence {after} are refused (cdp_status)"
                ),
            ));
        }
        if live.whole.load(Acquire) {
            let gap = live.gap.load(Acquire);
            r["gap_seq"] = json!(gap);
            r["whole_from_ns"] = json!(live.gap_time.load(Relaxed));
            r["catching_up"] = json!(false);
            r["note"] = json!(if after == 0 {
                format!(
                    "a new history: restorable from sequence {gap} on (the gap record after the volume was journaled)"
                )
            } else {
                format!(
                    "history resumed: points up to sequence {after} and from sequence {gap} on are restorable; points in between (while CDP was off and the volume was journaled again) are refused"
                )
            });
        } else {
            r["catching_up"] = json!(true);
            let done = live.done_bytes.load(Relaxed);
            r["note"] = json!(if done >= size {
                // Under the mirror: journaled, but not vouched for (resynced, fenced, no lease).
                "the volume is journaled again; the history is whole once the mirror vouches for this site's replica (it is being resynced, or has no read lease: mirror_status); cdp_status shows catching_up until then".to_string()
            } else {
                format!(
                    "still journaling the volume again after {} s ({done} of {} bytes); cdp_status shows catching_up until the history is whole",
                    wait.as_secs_f64(),
                    size
                )
            });
        }
        tracing::info!(volume = %name, dir = %dir.display(), after, "control: CDP switched on");
        Ok(r)
    }
}

/// `cdp_disable {volume}`.
pub(super) fn cdp_disable(p: &Value, cx: &ControlCx, _st: &mut AdminState) -> Result<Value, Error> {
    let (vol, v, info) = target(cx, p)?;
    let name = v.name.clone();
    // Off but still in the stack: an earlier disable failed part way; its steps are done
    // again (each does nothing where it was done already).
    let Some(info) = info.filter(|c| !c.stats.off.load(Relaxed) || installed(&v, &c.device)) else {
        return Err(bad(format!(
            "CDP is not on for volume {name:?} (cdp_enable switches it on)"
        )));
    };
    let cd = Arc::clone(&info.device);
    let n = cx.rt.mailboxes.len();
    let home = cd.home;
    let depth = depth(cx, vol);
    // On top, the device under the layer becomes the volume's; under the mirror the top
    // stays (its stack is changed below once every reactor's channels are).
    let nv = if depth == 0 {
        let mut nv = Volume::with_path(name.clone(), cd.inner(), Arc::clone(&v.path));
        nv.peer_path = v.peer_path.clone();
        Arc::new(nv)
    } else {
        Arc::clone(&v)
    };
    let step = |step| move |_| Box::new(Disable { step, depth }) as Box<dyn Restack>;
    let fail = |step: &str, e: String| {
        tracing::error!(volume = %name, step, error = %e, "cdp: switching off failed");
        (E_FAILED, format!("volume {name:?}: {step}: {e}"))
    };
    // 1. The home stamps the last mark and stops journaling.
    restack(cx, vol, &v, &[home], step(DisableStep::Stop))
        .map_err(|e| fail("stopping the journal", e))?;
    // 2. The other reactors write the base directly again.
    let others: Vec<usize> = (0..n).filter(|&r| r != home).collect();
    restack(cx, vol, &nv, &others, step(DisableStep::Remote))
        .map_err(|e| fail("unwrapping the other reactors' channels", e))?;
    // 3. The home unwraps once nothing is in flight (asked again while busy).
    let t = Instant::now();
    loop {
        match restack(cx, vol, &nv, &[home], step(DisableStep::Unwrap)) {
            Ok(()) => break,
            Err(e) if e.contains("busy") && t.elapsed() < REACTOR_WAIT => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(fail("unwrapping the home reactor's channel", e)),
        }
    }
    let nv = if depth == 0 {
        nv
    } else {
        device_at(&v, depth - 1)?.set_lower(cd.inner());
        republished(&v)
    };
    cx.rt.volumes.replace(vol, nv);
    cx.cdp_lists
        .spares
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|s| s.dir != info.dir);
    cx.cdp_lists
        .retained
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|s| s.dir != info.dir);
    // The segments' mappings go now, not when the last holder of the layer does: the
    // history's files may be deleted next, and a mapping keeps a file's memory.
    cd.spare.maps.clear();
    // And a full segment's mapping the writer gave the segment thread, if it is still there.
    cd.spare.unmap_retired();
    cd.release_lock();
    let st = &cd.stats;
    let (seq, time) = (st.durable_seq.load(Relaxed), st.durable_time.load(Relaxed));
    tracing::info!(volume = %name, last_seq = seq, "control: CDP switched off");
    // Whole only up to an earlier point (a catch-up abandoned by this disable, a journal
    // stopped before it): later points are refused, and the answer says so.
    let short = crate::layer::cdp::store::load(&info.dir, crate::layer::cdp::store::Load::ReadOnly)
        .ok()
        .and_then(|h| h.open_gap.filter(|g| g.0 < h.last_seq));
    let (whole_until, note) = match short {
        None => (
            seq,
            "the history ends at its last time mark and stays readable (views, restores); cdp_enable resumes it with a gap record for the time it was off".to_string(),
        ),
        Some((0, _)) => (
            0,
            "the history was never whole (its catch-up was abandoned or its journal stopped first): no point of it is served; cdp_enable journals the volume again".to_string(),
        ),
        Some((x, _)) => (
            x,
            format!("the history is whole only up to sequence {x} (a catch-up abandoned or the journal stopped): later points are refused; earlier ones stay readable (views, restores)"),
        ),
    };
    Ok(json!({
        "volume": name,
        "dir": info.dir.display().to_string(),
        "last_seq": seq,
        "whole_until_seq": whole_until,
        "window_start_ns": st.window_start.load(Relaxed).max(info.created),
        "window_end_ns": time,
        "note": note,
        "lasts": lasts(),
    }))
}
