//! Run-time changes of the NVMe-oF subsystems and iSCSI targets (the model and invariants are
//! [`super::admin`]'s; docs/control.md, "Run-time changes").
//!
//! A subsystem or target is immutable: a change builds a changed copy and puts it in the
//! table in the old one's place (under the table's write lock), so connections keep a copy
//! and never lock per I/O. Consequences, all documented:
//! - a namespace change reaches connected NVMe/TCP hosts without closing anything: the new
//!   copy's generation is published (`ctrl::Subsystem::publish`), each queue takes the new
//!   copy at its next command, and every admin queue of the subsystem is sent a note so an
//!   idle one takes it at once and reports the Namespace Attribute Changed event; the hosts'
//!   records list the new volumes; reservations of the namespaces that stay are kept;
//! - a LUN change to a target with connected hosts is refused unless `force: true`, which
//!   closes those connections first (they reconnect and see the new set; their reservations
//!   on a run-time target start over, since they are kept per copy);
//! - an allowed host list change applies to the next connections; `nvmf_host_disallow` with
//!   `force: true` also closes the host's connections.

use super::ControlCx;
use super::admin::{
    AdminState, E_CONFIGURED, E_FAILED, E_IN_USE, Error, REACTOR_WAIT, bad, describe_hosts,
    disconnect, flag, lasts, num, plain_only, s, strings, volume,
};
use crate::frontend::iscsi::{IscsiLun, IscsiTarget};
use crate::frontend::nvmf::ctrl::Subsystem;
use crate::runtime::hosts::HostRecord;
use crate::runtime::{Msg, NoteTo};
use serde_json::{Value, json};
use std::sync::Arc;

/// Highest namespace id a run-time namespace may take.
pub const MAX_NSID: u64 = crate::frontend::nvmf::ctrl::MAX_NSID as u64;
/// Highest LUN a run-time LUN may take.
pub const MAX_LUN: u64 = 255;

fn check_nqn(nqn: &str) -> Result<(), Error> {
    if !nqn.starts_with("nqn.") || nqn.len() > 223 || !crate::control::config::plain_text(nqn) {
        return Err(bad(format!(
            "NQN {nqn:?}: must start with \"nqn.\", be at most 223 bytes and have no spaces or control characters"
        )));
    }
    if nqn == crate::frontend::nvmf::cmd::DISCOVERY_NQN {
        return Err(bad("the discovery NQN cannot name a subsystem"));
    }
    Ok(())
}

fn check_host(what: &str, h: &str) -> Result<(), Error> {
    if h.is_empty() || h.len() > 223 || !crate::control::config::plain_text(h) {
        return Err(bad(format!(
            "{what} {h:?}: give 1 to 223 bytes without spaces or control characters"
        )));
    }
    Ok(())
}

/// Refuse a list naming an entry twice (a disallow of it would remove both).
fn no_twice(what: &str, list: &[String]) -> Result<(), Error> {
    if let Some((i, h)) = list
        .iter()
        .enumerate()
        .find(|(i, h)| list[..*i].contains(h))
    {
        return Err(bad(format!(
            "{what} {h:?} is given twice (entries {} and {i}): give each once",
            list[..i].iter().position(|x| x == h).unwrap_or(0)
        )));
    }
    Ok(())
}

fn nvmf_hosts(nqn: &str) -> impl Fn(&HostRecord) -> bool + '_ {
    move |r: &HostRecord| r.proto == "nvmf" && r.target == nqn
}

fn iscsi_hosts(iqn: &str) -> impl Fn(&HostRecord) -> bool + '_ {
    move |r: &HostRecord| r.proto == "iscsi" && r.target == iqn
}

/// [`disconnect`] for NVMe/TCP connections: the I/O queues `pick` selects first, then the
/// rest (the admin queues). A controller whose admin queue closes is torn down, its I/O
/// queues' sockets shut at once (`Controller::teardown`): commands they had at the device would
/// finish on the volume unanswered. Closed cleanly first, each queue answers them, then
/// closes; the call waits for that as before. How many connections closed.
fn disconnect_queues_first(
    cx: &ControlCx,
    pick: impl Fn(&HostRecord) -> bool,
) -> Result<usize, Error> {
    let io = disconnect(cx, |r| pick(r) && r.queue.is_some_and(|q| q > 0))?;
    Ok(io + disconnect(cx, &pick)?)
}

/// Refuse while `pick` selects connected hosts, unless `force`; the message names `what`.
fn in_use(
    cx: &ControlCx,
    force: bool,
    what: &str,
    pick: &dyn Fn(&HostRecord) -> bool,
) -> Result<(), Error> {
    if !force && let Some(h) = describe_hosts(cx, pick) {
        return Err((
            E_IN_USE,
            format!("{what} has {h}; give \"force\": true to close them first"),
        ));
    }
    Ok(())
}

fn subsystem_json(cx: &ControlCx, s: &Subsystem) -> Value {
    json!({
        "nqn": s.nqn,
        "allowed_hosts": s.allowed_hosts,
        "namespaces": s.namespaces.iter().map(|n| json!({"nsid": n.nsid, "volume": cx.rt.volumes.name(n.volume)})).collect::<Vec<_>>(),
        "lasts": lasts(),
    })
}

/// The index of subsystem `nqn`; `runtime`: it must have been added at run time.
fn find_sub(subs: &[Arc<Subsystem>], nqn: &str, runtime: Option<&str>) -> Result<usize, Error> {
    let i = subs.iter().position(|s| s.nqn == nqn).ok_or_else(|| {
        bad(format!(
            "no NVMe-oF subsystem {nqn:?} (nvmf_subsystems lists them)"
        ))
    })?;
    if let Some(what) = runtime
        && !subs[i].runtime
    {
        return Err((
            E_CONFIGURED,
            format!(
                "subsystem {nqn:?} comes from the config file: {what} there and restart the daemon"
            ),
        ));
    }
    Ok(i)
}

/// `nvmf_subsystem_add {nqn, allowed_hosts?}`.
pub fn nvmf_subsystem_add(p: &Value, cx: &ControlCx, _: &mut AdminState) -> Result<Value, Error> {
    let nqn = s(p, "nqn")?;
    check_nqn(nqn)?;
    let hosts = strings(p, "allowed_hosts")?;
    for h in &hosts {
        check_host("host NQN", h)?;
    }
    no_twice("host NQN", &hosts)?;
    let mut subs = cx.nvmf.subs_mut();
    if subs.iter().any(|s| s.nqn == nqn) {
        return Err(bad(format!("a subsystem {nqn:?} exists already")));
    }
    let sub = Subsystem::at_runtime(nqn.to_string(), hosts, cx.rt.volumes.capacity());
    let out = subsystem_json(cx, &sub);
    subs.push(Arc::new(sub));
    tracing::info!(nqn, "control: NVMe-oF subsystem added");
    Ok(out)
}

/// `nvmf_subsystem_remove {nqn, force?}`.
pub fn nvmf_subsystem_remove(
    p: &Value,
    cx: &ControlCx,
    _: &mut AdminState,
) -> Result<Value, Error> {
    let nqn = s(p, "nqn")?;
    let force = flag(p, "force")?;
    {
        let mut subs = cx.nvmf.subs_mut();
        let i = find_sub(&subs, nqn, Some("remove it"))?;
        in_use(cx, force, &format!("subsystem {nqn:?}"), &nvmf_hosts(nqn))?;
        subs.remove(i);
    }
    let closed = disconnect_queues_first(cx, nvmf_hosts(nqn))?;
    tracing::info!(nqn, closed, "control: NVMe-oF subsystem removed");
    Ok(json!({"nqn": nqn, "removed": true, "closed_connections": closed}))
}

/// Replace subsystem `nqn` (a run-time one) by `change`'s copy, with its connections: each
/// queue takes the new copy at its next command, every admin queue is told at once (for the
/// Namespace Attribute Changed event) and the hosts' records list the new volumes. The reply
/// and how many controllers were told.
fn change_namespaces(
    cx: &ControlCx,
    nqn: &str,
    change: impl FnOnce(&Subsystem) -> Result<Vec<(u32, usize)>, Error>,
) -> Result<(Value, usize), Error> {
    let pick = nvmf_hosts(nqn);
    // Swapped, published and the records updated under the write lock: a queue registers
    // under the read lock with the copy in the table (see `frontend::nvmf`), so its record
    // either has the new volumes or is updated here.
    let (new, told) = {
        let mut subs = cx.nvmf.subs_mut();
        let i = find_sub(&subs, nqn, Some("change its namespaces"))?;
        let ns = change(&subs[i])?;
        let new = Arc::new(subs[i].with_changed_namespaces(&ns));
        subs[i] = Arc::clone(&new);
        new.publish();
        let vols: Vec<usize> = new.namespaces.iter().map(|n| n.volume).collect();
        let mut told = 0;
        for (_, r) in cx.rt.hosts.list().into_iter().filter(|(_, r)| pick(r)) {
            r.set_volumes(vols.clone());
            // An admin queue reports the event; an I/O queue takes the copy at its next
            // command by itself.
            if r.queue == Some(0)
                && let Some(m) = cx.rt.mailboxes.get(r.reactor)
            {
                m.send(Msg::Note {
                    to: NoteTo::Conn(r.conn),
                    note: Box::new(crate::frontend::nvmf::Note::NsChanged { key: r.conn }),
                });
                told += 1;
            }
        }
        (new, told)
    };
    Ok((subsystem_json(cx, &new), told))
}

/// After a namespace of `nqn` was removed: tell every I/O queue of the subsystem to take the
/// new namespace set and wait until each has no command of a namespace it lacks left at the
/// device (`Note::NsDrain`; a queue that closes meanwhile answers by closing). Commands the
/// queues accepted before the change finish on the removed namespace's volume; once this
/// returns, none is left, and no command can reach that volume through the NSID any more.
/// How many queues were asked.
fn settle_queues(cx: &ControlCx, nqn: &str) -> Result<usize, Error> {
    let pick = nvmf_hosts(nqn);
    let queues: Vec<Arc<HostRecord>> = cx
        .rt
        .hosts
        .list()
        .into_iter()
        .map(|(_, r)| r)
        .filter(|r| pick(r) && r.queue.is_some_and(|q| q > 0))
        .collect();
    // Room for every answer: a reactor never waits to send one.
    let (tx, rx) = std::sync::mpsc::sync_channel(queues.len().max(1));
    let mut asked = 0;
    for r in &queues {
        if let Some(m) = cx.rt.mailboxes.get(r.reactor) {
            m.send(Msg::Note {
                to: NoteTo::Conn(r.conn),
                note: Box::new(crate::frontend::nvmf::Note::NsDrain {
                    key: r.conn,
                    done: tx.clone(),
                }),
            });
            asked += 1;
        }
    }
    drop(tx);
    let deadline = std::time::Instant::now() + REACTOR_WAIT;
    let mut settled = 0;
    while settled < asked {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(()) => settled += 1,
            // Every queue still owing an answer closed (its commands finished first).
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                return Err((
                    E_FAILED,
                    format!(
                        "the namespace is removed, but {} of {asked} I/O queue(s) of {nqn:?} still had commands of it at the device after {} s: they finish on its volume",
                        asked - settled,
                        REACTOR_WAIT.as_secs()
                    ),
                ));
            }
        }
    }
    Ok(asked)
}

/// `nvmf_namespace_add {nqn, volume, nsid?, force?}`.
pub fn nvmf_namespace_add(p: &Value, cx: &ControlCx, _: &mut AdminState) -> Result<Value, Error> {
    let nqn = s(p, "nqn")?;
    let (vol, v) = volume(cx, s(p, "volume")?)?;
    plain_only(&v, "a configured subsystem")?;
    let nsid = num(p, "nsid")?;
    if let Some(n) = nsid
        && !(1..=MAX_NSID).contains(&n)
    {
        return Err(bad(format!("nsid {n}: give 1 to {MAX_NSID}")));
    }
    // Accepted as before; a namespace change closes no connection any more.
    flag(p, "force")?;
    let mut chosen = 0;
    let (mut out, told) = change_namespaces(cx, nqn, |sub| {
        let mut ns = sub.numbered();
        let id = match nsid {
            Some(n) if ns.iter().any(|&(x, _)| u64::from(x) == n) => {
                return Err(bad(format!(
                    "subsystem {nqn:?} has a namespace {n} already"
                )));
            }
            Some(n) => n as u32,
            None => (1..=MAX_NSID as u32)
                .find(|x| !ns.iter().any(|&(y, _)| y == *x))
                .ok_or_else(|| bad(format!("subsystem {nqn:?} has {MAX_NSID} namespaces")))?,
        };
        chosen = id;
        ns.push((id, vol));
        Ok(ns)
    })?;
    out["nsid"] = json!(chosen);
    out["closed_connections"] = json!(0);
    out["notified_controllers"] = json!(told);
    tracing::info!(nqn, nsid = chosen, volume = %v.name, "control: NVMe-oF namespace added");
    Ok(out)
}

/// `nvmf_namespace_remove {nqn, nsid, force?}`.
pub fn nvmf_namespace_remove(
    p: &Value,
    cx: &ControlCx,
    _: &mut AdminState,
) -> Result<Value, Error> {
    let nqn = s(p, "nqn")?;
    let nsid = num(p, "nsid")?.ok_or_else(|| bad("params need \"nsid\""))?;
    flag(p, "force")?;
    let (mut out, told) = change_namespaces(cx, nqn, |sub| {
        let ns = sub.numbered();
        if !ns.iter().any(|&(x, _)| u64::from(x) == nsid) {
            return Err(bad(format!("subsystem {nqn:?} has no namespace {nsid}")));
        }
        Ok(ns
            .into_iter()
            .filter(|&(x, _)| u64::from(x) != nsid)
            .collect())
    })?;
    // The reply waits until no command the queues accepted for it is left at the device.
    settle_queues(cx, nqn)?;
    out["closed_connections"] = json!(0);
    out["notified_controllers"] = json!(told);
    tracing::info!(nqn, nsid, "control: NVMe-oF namespace removed");
    Ok(out)
}

/// `nvmf_host_allow {nqn, host}` / `nvmf_host_disallow {nqn, host, force?}`: any subsystem.
fn host_list_change(p: &Value, cx: &ControlCx, allow: bool) -> Result<Value, Error> {
    let nqn = s(p, "nqn")?;
    let host = s(p, "host")?;
    check_host("host NQN", host)?;
    let force = flag(p, "force")?;
    let new = {
        let mut subs = cx.nvmf.subs_mut();
        let i = find_sub(&subs, nqn, None)?;
        let mut sub = (*subs[i]).clone();
        let has = sub.allowed_hosts.iter().any(|h| h == host);
        if allow {
            if has {
                return Err(bad(format!("host {host:?} is allowed in {nqn:?} already")));
            }
            sub.allowed_hosts.push(host.to_string());
        } else {
            if !has {
                return Err(bad(format!(
                    "host {host:?} is not in {nqn:?}'s allowed hosts"
                )));
            }
            // Every entry naming it goes (a list from the config file may name it twice);
            // none may be left, since an empty list lets every host in.
            if sub.allowed_hosts.iter().all(|h| h == host) {
                return Err(bad(format!(
                    "{host:?} is {nqn:?}'s last allowed host: an empty list lets every host in; allow another host first, or remove the subsystem"
                )));
            }
            sub.allowed_hosts.retain(|h| h != host);
        }
        let new = Arc::new(sub);
        subs[i] = Arc::clone(&new);
        new
    };
    let closed = if !allow && force {
        disconnect_queues_first(cx, |r| {
            r.proto == "nvmf" && r.target == nqn && r.host.as_deref() == Some(host)
        })?
    } else {
        0
    };
    tracing::info!(nqn, host, allow, "control: NVMe-oF allowed hosts changed");
    let mut out = subsystem_json(cx, &new);
    out["closed_connections"] = json!(closed);
    Ok(out)
}

/// `nvmf_host_allow {nqn, host}`.
pub fn nvmf_host_allow(p: &Value, cx: &ControlCx, _: &mut AdminState) -> Result<Value, Error> {
    host_list_change(p, cx, true)
}

/// `nvmf_host_disallow {nqn, host, force?}`.
pub fn nvmf_host_disallow(p: &Value, cx: &ControlCx, _: &mut AdminState) -> Result<Value, Error> {
    host_list_change(p, cx, false)
}

fn iscsi(cx: &ControlCx) -> Result<&crate::frontend::iscsi::IscsiShared, Error> {
    cx.iscsi
        .as_deref()
        .ok_or_else(|| bad("this daemon has no iSCSI front end"))
}

fn target_json(cx: &ControlCx, t: &IscsiTarget) -> Value {
    json!({
        "iqn": t.iqn,
        "allowed_initiators": t.allowed,
        "luns": t.luns.iter().map(|l| json!({"lun": l.lun, "volume": cx.rt.volumes.name(l.volume)})).collect::<Vec<_>>(),
        "lasts": lasts(),
    })
}

fn find_target(tgts: &[Arc<IscsiTarget>], iqn: &str, what: &str) -> Result<usize, Error> {
    let i = tgts
        .iter()
        .position(|t| t.iqn == iqn)
        .ok_or_else(|| bad(format!("no iSCSI target {iqn:?}")))?;
    if !tgts[i].runtime {
        return Err((
            E_CONFIGURED,
            format!(
                "iSCSI target {iqn:?} comes from the config file: {what} there and restart the daemon"
            ),
        ));
    }
    Ok(i)
}

/// `iscsi_target_add {iqn, allowed_initiators?}` (no CHAP: CHAP targets are configured).
pub fn iscsi_target_add(p: &Value, cx: &ControlCx, _: &mut AdminState) -> Result<Value, Error> {
    let sh = iscsi(cx)?;
    let iqn = s(p, "iqn")?;
    let ok_prefix = ["iqn.", "eui.", "naa."].iter().any(|x| iqn.starts_with(x));
    if !ok_prefix || iqn.len() > 223 || !crate::control::config::plain_text(iqn) {
        return Err(bad(format!(
            "target name {iqn:?}: must start with \"iqn.\", \"eui.\" or \"naa.\", be at most 223 bytes and have no spaces or control characters"
        )));
    }
    if p.get("chap_user").is_some() || p.get("chap_secret").is_some() {
        return Err((
            E_CONFIGURED,
            "CHAP: configure targets with CHAP in the config file (secrets are not sent over the control socket)".into(),
        ));
    }
    let allowed = strings(p, "allowed_initiators")?;
    for a in &allowed {
        check_host("initiator name", a)?;
    }
    no_twice("initiator name", &allowed)?;
    let mut tgts = sh.tgts_mut();
    if tgts.iter().any(|t| t.iqn == iqn) {
        return Err(bad(format!("an iSCSI target {iqn:?} exists already")));
    }
    crate::control::config::check_case_unique(
        "iSCSI target names",
        tgts.iter().map(|t| t.iqn.as_str()).chain([iqn]),
    )
    .map_err(bad)?;
    let t = IscsiTarget {
        iqn: iqn.to_string(),
        luns: Vec::new(),
        allowed,
        chap: None,
        runtime: true,
    };
    let out = target_json(cx, &t);
    tgts.push(Arc::new(t));
    tracing::warn!(
        target_name = iqn,
        "control: iSCSI target added (without CHAP: any initiator its allow list admits can log in)"
    );
    Ok(out)
}

/// `iscsi_target_remove {iqn, force?}`.
pub fn iscsi_target_remove(p: &Value, cx: &ControlCx, _: &mut AdminState) -> Result<Value, Error> {
    let sh = iscsi(cx)?;
    let iqn = s(p, "iqn")?;
    let force = flag(p, "force")?;
    {
        let mut tgts = sh.tgts_mut();
        let i = find_target(&tgts, iqn, "remove it")?;
        in_use(
            cx,
            force,
            &format!("iSCSI target {iqn:?}"),
            &iscsi_hosts(iqn),
        )?;
        tgts.remove(i);
    }
    let closed = disconnect(cx, iscsi_hosts(iqn))?;
    tracing::info!(target_name = iqn, closed, "control: iSCSI target removed");
    Ok(json!({"iqn": iqn, "removed": true, "closed_connections": closed}))
}

/// Replace run-time target `iqn` by a copy with the LUNs `change` gives (sorted by LUN).
fn change_luns(
    cx: &ControlCx,
    iqn: &str,
    force: bool,
    change: impl FnOnce(&IscsiTarget) -> Result<Vec<IscsiLun>, Error>,
) -> Result<(Value, usize), Error> {
    let sh = iscsi(cx)?;
    let pick = iscsi_hosts(iqn);
    {
        let mut tgts = sh.tgts_mut();
        let i = find_target(&tgts, iqn, "change its LUNs")?;
        in_use(cx, force, &format!("iSCSI target {iqn:?}"), &pick)?;
        let mut luns = change(&tgts[i])?;
        luns.sort_by_key(|l| l.lun);
        let t = IscsiTarget {
            luns,
            ..(*tgts[i]).clone()
        };
        tgts[i] = Arc::new(t);
    }
    let closed = if force { disconnect(cx, &pick)? } else { 0 };
    let t = sh
        .find(iqn)
        .ok_or_else(|| bad(format!("no iSCSI target {iqn:?}")))?;
    Ok((target_json(cx, &t), closed))
}

/// `iscsi_lun_add {iqn, volume, lun?, force?}`.
pub fn iscsi_lun_add(p: &Value, cx: &ControlCx, _: &mut AdminState) -> Result<Value, Error> {
    let iqn = s(p, "iqn")?;
    let vname = s(p, "volume")?;
    let (vol, v) = volume(cx, vname)?;
    plain_only(&v, "a configured target")?;
    let lun = num(p, "lun")?;
    if let Some(n) = lun
        && n > MAX_LUN
    {
        return Err(bad(format!("lun {n}: give 0 to {MAX_LUN}")));
    }
    let force = flag(p, "force")?;
    let mut chosen = 0;
    let (mut out, closed) = change_luns(cx, iqn, force, |t| {
        let mut luns = t.luns.clone();
        let n = match lun {
            Some(n) if luns.iter().any(|l| u64::from(l.lun) == n) => {
                return Err(bad(format!("iSCSI target {iqn:?} has a LUN {n} already")));
            }
            Some(n) => n as u16,
            None => (0..=MAX_LUN as u16)
                .find(|x| !luns.iter().any(|l| l.lun == *x))
                .ok_or_else(|| bad(format!("iSCSI target {iqn:?} has {} LUNs", MAX_LUN + 1)))?,
        };
        chosen = n;
        luns.push(IscsiLun::new(n, vol, &v.name));
        Ok(luns)
    })?;
    out["lun"] = json!(chosen);
    out["closed_connections"] = json!(closed);
    tracing::info!(
        target_name = iqn,
        lun = chosen,
        volume = vname,
        "control: iSCSI LUN added"
    );
    Ok(out)
}

/// `iscsi_lun_remove {iqn, lun, force?}`.
pub fn iscsi_lun_remove(p: &Value, cx: &ControlCx, _: &mut AdminState) -> Result<Value, Error> {
    let iqn = s(p, "iqn")?;
    let lun = num(p, "lun")?.ok_or_else(|| bad("params need \"lun\""))?;
    let force = flag(p, "force")?;
    let (mut out, closed) = change_luns(cx, iqn, force, |t| {
        if !t.luns.iter().any(|l| u64::from(l.lun) == lun) {
            return Err(bad(format!("iSCSI target {iqn:?} has no LUN {lun}")));
        }
        Ok(t.luns
            .iter()
            .filter(|l| u64::from(l.lun) != lun)
            .cloned()
            .collect())
    })?;
    out["closed_connections"] = json!(closed);
    tracing::info!(target_name = iqn, lun, "control: iSCSI LUN removed");
    Ok(out)
}
