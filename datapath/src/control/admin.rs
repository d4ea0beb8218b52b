//! Run-time changes through the control socket: volumes (`volume_create`, `volume_delete`)
//! and NBD exports (`nbd_export_add`, `nbd_export_remove`); the NVMe-oF and iSCSI methods are
//! in [`super::admin_front`]. docs/control.md, "Run-time changes", documents every method.
//!
//! Model: the control thread makes one change at a time (the [`AdminState`] mutex, held from
//! the first check to the answer). A volume is created off the reactors (its device opened
//! or mapped here), put in a free slot of the runtime's volume table (not listed yet), and
//! opened by every reactor through its mailbox ([`Msg::OpenVolume`]); only when every
//! reactor answered is it listed. Deletion runs the other way: the volume is unlisted, every
//! reactor closes its channel once nothing it started is in flight ([`Msg::CloseVolume`]),
//! then the slot is freed.
//!
//! Invariants:
//! - A volume is deleted only when nothing reaches it: no NBD export, namespace or LUN names
//!   it and no connected host lists it. Exports, subsystems and targets register hosts under
//!   their table's read lock and only while the object is there, and removals check hosts
//!   under the write lock, so "no host" cannot be invalidated by a connection in progress.
//! - Objects from the config file are never removed at run time (the next start would bring
//!   them back); the only change to them is an NVMe subsystem's allowed hosts.
//! - A failed creation changes nothing: a reactor that opened the channel closes it again
//!   and the slot is freed.
//! - Changes last until the daemon stops: nothing is written to disk.
//!
//! Run-time volumes are plain (`malloc` or `uring`, optionally nothing else): mirrored and CDP
//! volumes need state directories, peers and pollers that are set up at start. The
//! `VolumeConfig` path through [`super::build::build_device`] is the one the config file takes,
//! so such layers can be added here later by the same stack building.

use super::ControlCx;
use crate::bdev::volume::Volume;
use crate::control::config::{Backend, Size, VolumeConfig, parse_size};
use crate::frontend::nbd::NbdExport;
use crate::runtime::Msg;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::time::{Duration, Instant};

/// Invalid parameters (unknown object, bad value, duplicate name); nothing changed.
pub const E_PARAMS: i64 = -32602;
/// Refused: the object is in use (exported, hosts connected without `force`); nothing changed.
pub const E_IN_USE: i64 = -32020;
/// The device could not be set up or a reactor failed; nothing changed.
pub const E_FAILED: i64 = -32021;
/// Refused: the object comes from the config file; nothing changed.
pub const E_CONFIGURED: i64 = -32022;

/// A method's error: JSON-RPC code and message.
pub type Error = (i64, String);

/// How long a reactor may take to open or close a channel, and connections to close.
pub const REACTOR_WAIT: Duration = Duration::from_secs(15);

/// What the control thread remembers of the run-time changes.
#[derive(Default)]
pub struct AdminState {
    /// Slots of the volumes created at run time.
    pub runtime_vols: Vec<usize>,
    /// The files and block devices of the run-time file volumes, by slot.
    pub runtime_paths: Vec<(usize, std::path::PathBuf)>,
}

/// Every volume's backing file (name, path): the config file's and the run-time ones.
pub(super) fn volume_files(cx: &ControlCx, st: &AdminState) -> Vec<(String, std::path::PathBuf)> {
    let configured =
        (cx.volume_configs.iter()).filter_map(|v| Some((v.name.clone(), v.path.clone()?)));
    let runtime = (st.runtime_paths.iter()).map(|(slot, p)| (cx.rt.volumes.name(*slot), p.clone()));
    configured.chain(runtime).collect()
}

/// Every CDP directory (volume name, dir): the config file's and those CDP runs in.
pub(super) fn cdp_dirs(cx: &ControlCx) -> Vec<(String, std::path::PathBuf)> {
    let configured = (cx.volume_configs.iter())
        .filter_map(|v| Some((v.name.clone(), v.cdp.as_ref()?.dir.clone())));
    let running: Vec<_> = (cx.cdp.read().unwrap_or_else(|e| e.into_inner()).iter())
        .map(|c| (cx.rt.volumes.name(c.vol), c.dir.clone()))
        .collect();
    configured.chain(running).collect()
}

/// Added to every successful change's result.
pub fn lasts() -> Value {
    json!(
        "until the daemon stops (run-time changes are not saved; add them to the config file to keep them)"
    )
}

pub(super) fn bad(m: impl Into<String>) -> Error {
    (E_PARAMS, m.into())
}

/// A required string parameter.
pub(super) fn s<'a>(p: &'a Value, k: &str) -> Result<&'a str, Error> {
    match p.get(k) {
        Some(Value::String(v)) => Ok(v),
        None | Some(Value::Null) => Err(bad(format!("params need \"{k}\""))),
        Some(_) => Err(bad(format!("\"{k}\" must be a string"))),
    }
}

/// An optional boolean parameter (default false).
pub(super) fn flag(p: &Value, k: &str) -> Result<bool, Error> {
    match p.get(k) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad(format!("\"{k}\" must be true or false"))),
    }
}

/// An optional whole number parameter.
pub(super) fn num(p: &Value, k: &str) -> Result<Option<u64>, Error> {
    match p.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad(format!("\"{k}\" must be a whole number"))),
    }
}

/// An optional list of strings.
pub(super) fn strings(p: &Value, k: &str) -> Result<Vec<String>, Error> {
    match p.get(k) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| bad(format!("\"{k}\" must be a list of strings")))
            })
            .collect(),
        Some(_) => Err(bad(format!("\"{k}\" must be a list of strings"))),
    }
}

/// The served volume named `name`.
pub(super) fn volume(cx: &ControlCx, name: &str) -> Result<(usize, Arc<Volume>), Error> {
    let i = cx
        .rt
        .volumes
        .find(name)
        .ok_or_else(|| bad(format!("no volume named {name:?} (volume_list lists them)")))?;
    let v = cx
        .rt
        .volumes
        .get(i)
        .ok_or_else(|| bad(format!("no volume named {name:?}")))?;
    Ok((i, v))
}

/// A volume whose stack has a layer decided with another site or journaled (mirror, CDP)
/// cannot be added to a run-time subsystem or target: its reservations are replicated by
/// tables built at start.
pub(super) fn plain_only(v: &Volume, what: &str) -> Result<(), Error> {
    if v.info.kind.contains("mirror") || v.info.kind.contains("cdp") {
        return Err((
            E_CONFIGURED,
            format!(
                "volume {:?} is {} ({}): put it in {what} in the config file",
                v.name,
                if v.info.kind.contains("mirror") {
                    "mirrored"
                } else {
                    "journaled"
                },
                v.info.kind
            ),
        ));
    }
    Ok(())
}

/// Wait for one answer per reactor on `rx`; the reactors that did not answer in time.
pub(super) fn wait_all<T>(rx: &Receiver<T>, n: usize, mut each: impl FnMut(T)) -> usize {
    let deadline = Instant::now() + REACTOR_WAIT;
    let mut got = 0;
    while got < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(v) => {
                got += 1;
                each(v);
            }
            Err(_) => break,
        }
    }
    n - got
}

/// Close slot `vol`'s channel on every reactor (each once nothing it started is in flight).
fn close_everywhere(cx: &ControlCx, vol: usize) -> Result<(), Error> {
    let n = cx.rt.mailboxes.len();
    let (tx, rx) = sync_channel(n);
    for m in &cx.rt.mailboxes {
        m.send(Msg::CloseVolume {
            vol,
            done: tx.clone(),
        });
    }
    drop(tx);
    let late = wait_all(&rx, n, |()| {});
    if late > 0 {
        return Err((
            E_FAILED,
            format!(
                "{late} reactor(s) did not close the volume's channel within {} s (I/O still in flight, or the daemon is stopping); the volume stays unlisted",
                REACTOR_WAIT.as_secs()
            ),
        ));
    }
    Ok(())
}

/// Stop every connected host `pick` selects, cleanly, and wait until the registry lists none
/// of them; how many there were.
pub(super) fn disconnect(
    cx: &ControlCx,
    pick: impl Fn(&crate::runtime::hosts::HostRecord) -> bool,
) -> Result<usize, Error> {
    let found: Vec<_> = cx
        .rt
        .hosts
        .list()
        .into_iter()
        .filter(|(_, r)| pick(r))
        .collect();
    for (id, r) in &found {
        if let Some(m) = cx.rt.mailboxes.get(r.reactor) {
            m.send(Msg::Disconnect {
                conn: r.conn,
                host_id: *id,
            });
        }
    }
    let deadline = Instant::now() + REACTOR_WAIT;
    loop {
        let left = cx
            .rt
            .hosts
            .list()
            .into_iter()
            .filter(|(id, _)| found.iter().any(|(f, _)| f == id))
            .count();
        if left == 0 {
            return Ok(found.len());
        }
        if Instant::now() >= deadline {
            return Err((
                E_FAILED,
                format!(
                    "{left} connection(s) did not close within {} s",
                    REACTOR_WAIT.as_secs()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// "host X from Y (proto), ..." for an error message.
pub(super) fn describe_hosts(
    cx: &ControlCx,
    pick: impl Fn(&crate::runtime::hosts::HostRecord) -> bool,
) -> Option<String> {
    let v: Vec<String> = cx
        .rt
        .hosts
        .list()
        .into_iter()
        .filter(|(_, r)| pick(r))
        .map(|(_, r)| {
            format!(
                "{} {} from {}",
                r.proto,
                r.host.as_deref().unwrap_or("(client)"),
                r.peer.map_or_else(|| "?".to_string(), |a| a.to_string())
            )
        })
        .collect();
    (!v.is_empty()).then(|| format!("{} connection(s): {}", v.len(), v.join(", ")))
}

/// A volume, export or target name: 1 to 64 of `A-Z a-z 0-9 . _ - :`.
fn check_name(what: &str, name: &str) -> Result<(), Error> {
    if !crate::control::config::valid_volume_name(name) {
        return Err(bad(format!(
            "{what} {name:?}: give 1 to 64 of A-Z a-z 0-9 . _ - :"
        )));
    }
    Ok(())
}

/// Refuse `path` for a new file volume when another served volume's file or block device is
/// the same (however it is spelt: `..`, a symbolic link, a hard link, another device node:
/// `config::same_file`) or it is inside a CDP history directory (`config::inside`): two
/// volumes would write the same blocks, or a volume a history's files. (The daemon's own
/// state files are refused by name: `check_not_a_state_file`; other files in its state
/// directories are the operator's, as in the config file.)
fn path_in_use(cx: &ControlCx, st: &AdminState, path: &std::path::Path) -> Result<(), Error> {
    use crate::control::config::{inside, same_file};
    if let Some((name, used)) = volume_files(cx, st)
        .into_iter()
        .find(|(_, used)| same_file(path, used))
    {
        return Err((
            E_IN_USE,
            format!(
                "path {} is the file of volume {name:?} ({}): give each volume its own",
                path.display(),
                used.display()
            ),
        ));
    }
    if let Some((name, dir)) = cdp_dirs(cx).into_iter().find(|(_, d)| inside(path, d)) {
        return Err((
            E_IN_USE,
            format!(
                "path {} is inside the history directory of volume {name:?} ({}): put the volume's file elsewhere",
                path.display(),
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// `volume_create {name, backend, size, block_size?, path?, create?}`.
pub(super) fn volume_create(
    p: &Value,
    cx: &ControlCx,
    st: &mut AdminState,
) -> Result<Value, Error> {
    for k in ["mirror", "cdp", "group", "leader", "view"] {
        if p.get(k).is_some_and(|v| !v.is_null() && *v != json!(false)) {
            return Err((
                E_CONFIGURED,
                format!(
                    "\"{k}\": configure mirrored/CDP volumes in the config file (a run-time volume is malloc or uring only)"
                ),
            ));
        }
    }
    let name = s(p, "name")?;
    check_name("volume name", name)?;
    let backend = match s(p, "backend")? {
        "malloc" => Backend::Malloc,
        "uring" => Backend::Uring,
        "cdp-view" => {
            return Err((
                E_CONFIGURED,
                "backend cdp-view: open a view with `twinblk cdp view` (configure mirrored/CDP volumes in the config file)".into(),
            ));
        }
        b => return Err(bad(format!("backend {b:?}: give \"malloc\" or \"uring\""))),
    };
    let size = match p.get("size") {
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| bad("\"size\" must be a whole number of bytes"))?,
        Some(Value::String(t)) => parse_size(t).map_err(|e| bad(format!("size: {e}")))?,
        _ => {
            return Err(bad(
                "params need \"size\" (bytes, or a string like \"64M\", \"1G\")",
            ));
        }
    };
    let block_size = num(p, "block_size")?.unwrap_or(512);
    if !matches!(block_size, 512 | 4096) {
        return Err(bad(format!("block_size {block_size}: give 512 or 4096")));
    }
    if size == 0 || !size.is_multiple_of(block_size) {
        return Err(bad(format!(
            "size {size} is not a non-zero multiple of the block size {block_size}"
        )));
    }
    let max = crate::control::config::MAX_VOLUME_SIZE;
    if size > max {
        return Err(bad(format!(
            "size {size} is too large: at most {max} bytes (2^63 - 1: file offsets are signed 64-bit)"
        )));
    }
    if backend == Backend::Malloc {
        // A bad size for this machine: refused as such, before anything is built.
        crate::bdev::malloc::check_fits_memory(size).map_err(|e| bad(e.to_string()))?;
    }
    let path = match (&backend, p.get("path")) {
        (Backend::Uring, Some(Value::String(t))) if !t.is_empty() => {
            Some(std::path::PathBuf::from(t))
        }
        (Backend::Uring, _) => {
            return Err(bad("backend uring needs \"path\" (a file or block device)"));
        }
        (_, None | Some(Value::Null)) => None,
        _ => return Err(bad("backend malloc takes no \"path\"")),
    };
    let create = flag(p, "create")?;
    if let Some(path) = &path {
        if !path.is_absolute() {
            return Err(bad(format!(
                "path {}: give an absolute path (the daemon's working directory is not yours)",
                path.display()
            )));
        }
        path_in_use(cx, st, path)?;
    }
    if let Some(path) = &path
        && !create
        && !path.exists()
    {
        return Err(bad(format!(
            "path {} does not exist (give \"create\": true to create a file there)",
            path.display()
        )));
    }
    if cx.rt.volumes.find(name).is_some() {
        return Err(bad(format!("a volume named {name:?} exists already")));
    }
    let names: Vec<String> = (cx.rt.volumes.list().into_iter())
        .map(|(_, v)| v.name.clone())
        .collect();
    crate::control::config::check_case_unique(
        "volume names",
        names.iter().map(String::as_str).chain([name]),
    )
    .map_err(bad)?;
    if let Some(path) = &path {
        crate::control::config::check_not_a_state_file(path, &cx.state_files).map_err(bad)?;
    }
    let vc = VolumeConfig {
        name: name.to_string(),
        backend,
        size: Size(size),
        block_size: block_size as u32,
        path: path.clone(),
        create,
        fail_range: None,
        fail_flush: false,
        fail_flush_after_ms: None,
        stall_range: None,
        slow_range: None,
        slow_ms: 0,
        slow_flush: false,
        volatile_cache: false,
        fail_writes_only: false,
        fail_reads_only: false,
        mirror: false,
        leader: None,
        group: None,
        cdp: None,
        view: None,
    };
    let device = super::build::build_device(&vc).map_err(|e| {
        let mut m = format!("volume {name:?}: {e}");
        let mut src = std::error::Error::source(&e);
        while let Some(c) = src {
            m.push_str(&format!(": {c}"));
            src = c.source();
        }
        (E_FAILED, m)
    })?;
    let vol = Arc::new(Volume::new(name, device));
    let slot = cx.rt.volumes.reserve(Arc::clone(&vol)).map_err(bad)?;
    let n = cx.rt.mailboxes.len();
    let (tx, rx) = sync_channel(n);
    for m in &cx.rt.mailboxes {
        m.send(Msg::OpenVolume {
            vol: slot,
            volume: Arc::clone(&vol),
            done: tx.clone(),
        });
    }
    drop(tx);
    let mut errors = Vec::new();
    let late = wait_all(&rx, n, |r| {
        if let Err(e) = r {
            errors.push(e);
        }
    });
    if late > 0 || !errors.is_empty() {
        // Undo: every reactor that opened it closes it again (the others ignore the close).
        let undone = close_everywhere(cx, slot);
        if undone.is_ok() {
            cx.rt.volumes.release(slot);
        }
        if late > 0 {
            errors.push(format!(
                "{late} reactor(s) did not answer within {} s",
                REACTOR_WAIT.as_secs()
            ));
        }
        return Err((
            E_FAILED,
            format!(
                "volume {name:?}: {}; nothing was created",
                errors.join("; ")
            ),
        ));
    }
    cx.rt.volumes.publish(slot);
    st.runtime_vols.push(slot);
    if let Some(path) = path {
        st.runtime_paths.push((slot, path));
    }
    tracing::info!(volume = name, slot, size, "control: volume created");
    Ok(json!({
        "name": name,
        "index": slot,
        "size": vol.info.size,
        "block_size": vol.info.block_size,
        "stack": vol.info.kind,
        "lasts": lasts(),
    }))
}

/// Who uses volume `vol`: exports, namespaces, LUNs (one line each).
fn users(cx: &ControlCx, vol: usize) -> Vec<String> {
    let mut u: Vec<String> = cx
        .nbd_exports
        .snapshot()
        .iter()
        .filter(|e| e.volume == vol)
        .map(|e| format!("NBD export {:?}", e.name))
        .collect();
    for sub in cx.nvmf.subs().iter() {
        for n in sub.namespaces.iter().filter(|n| n.volume == vol) {
            u.push(format!("NVMe-oF namespace {} of {}", n.nsid, sub.nqn));
        }
    }
    if let Some(i) = &cx.iscsi {
        for t in i.tgts().iter() {
            for l in t.luns.iter().filter(|l| l.volume == vol) {
                u.push(format!("iSCSI LUN {} of {}", l.lun, t.iqn));
            }
        }
    }
    u
}

/// `volume_delete {name}`.
pub(super) fn volume_delete(
    p: &Value,
    cx: &ControlCx,
    st: &mut AdminState,
) -> Result<Value, Error> {
    let name = s(p, "name")?;
    let (vol, v) = volume(cx, name)?;
    if v.info.kind.contains("cdp") {
        return Err((
            E_IN_USE,
            format!("volume {name:?} is journaled (CDP): switch it off first (cdp_disable)"),
        ));
    }
    if !st.runtime_vols.contains(&vol) {
        return Err((
            E_CONFIGURED,
            format!(
                "volume {name:?} comes from the config file: remove it there and restart the daemon"
            ),
        ));
    }
    let used = users(cx, vol);
    if !used.is_empty() {
        return Err((
            E_IN_USE,
            format!(
                "volume {name:?} is still exported ({}): remove those first",
                used.join(", ")
            ),
        ));
    }
    if let Some(h) = describe_hosts(cx, |r| r.reaches(vol)) {
        return Err((
            E_IN_USE,
            format!("volume {name:?} is still reached by {h}: wait for them to close"),
        ));
    }
    cx.rt.volumes.retire(vol);
    if let Err(e) = close_everywhere(cx, vol) {
        // Keep it served where it still is: list it again.
        cx.rt.volumes.publish(vol);
        return Err(e);
    }
    cx.rt.volumes.release(vol);
    // A history CDP was switched off in stays with its directory, not with the slot.
    cx.cdp
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|c| c.vol != vol);
    st.runtime_vols.retain(|&v| v != vol);
    st.runtime_paths.retain(|(v, _)| *v != vol);
    tracing::info!(volume = name, slot = vol, "control: volume deleted");
    Ok(json!({"name": name, "deleted": true}))
}

/// `nbd_export_add {name, volume, read_only?, description?}`.
pub(super) fn nbd_export_add(
    p: &Value,
    cx: &ControlCx,
    _st: &mut AdminState,
) -> Result<Value, Error> {
    let name = s(p, "name")?;
    check_name("export name", name)?;
    let (vol, v) = volume(cx, s(p, "volume")?)?;
    let read_only = flag(p, "read_only")?;
    let description = match p.get("description") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(d)) if d.len() <= 4096 => d.clone(),
        Some(_) => {
            return Err(bad(
                "\"description\" must be a string of at most 4096 bytes",
            ));
        }
    };
    let mut list = cx.nbd_exports.write();
    if list.iter().any(|e| e.name == name) {
        return Err(bad(format!("an NBD export named {name:?} exists already")));
    }
    list.push(NbdExport {
        name: name.to_string(),
        volume: vol,
        read_only,
        description,
        runtime: true,
    });
    tracing::info!(export = name, volume = %v.name, "control: NBD export added");
    Ok(json!({"name": name, "volume": v.name, "read_only": read_only, "lasts": lasts()}))
}

/// `nbd_export_remove {name, force?}`.
pub(super) fn nbd_export_remove(
    p: &Value,
    cx: &ControlCx,
    _st: &mut AdminState,
) -> Result<Value, Error> {
    let name = s(p, "name")?;
    let force = flag(p, "force")?;
    let is_mine = |r: &crate::runtime::hosts::HostRecord| r.proto == "nbd" && r.target == name;
    {
        let mut list = cx.nbd_exports.write();
        let Some(i) = list.iter().position(|e| e.name == name) else {
            return Err(bad(format!("no NBD export named {name:?}")));
        };
        if !list[i].runtime {
            return Err((
                E_CONFIGURED,
                format!(
                    "NBD export {name:?} comes from the config file: remove it there and restart the daemon"
                ),
            ));
        }
        if !force && let Some(h) = describe_hosts(cx, is_mine) {
            return Err((
                E_IN_USE,
                format!("NBD export {name:?} has {h}; give \"force\": true to close them"),
            ));
        }
        list.remove(i);
    }
    let closed = disconnect(cx, is_mine)?;
    tracing::info!(export = name, closed, "control: NBD export removed");
    Ok(json!({"name": name, "removed": true, "closed_connections": closed}))
}
