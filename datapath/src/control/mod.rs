//! The control socket: JSON-RPC 2.0 over a unix socket, one request per line.
//!
//! Model: one ordinary thread, never on the I/O path. It reads the reactors' published
//! counters (relaxed atomics) and the read-only daemon state; it never locks anything a
//! reactor touches.
//!
//! Methods (documented in docs/control.md): `daemon_info`, `volume_list`, `export_list`,
//! `reactor_stats`, `reactor_set_wait`, `volume_stats`, `mirror_status`, `mirror_takeover`,
//! `mirror_switchover`, `mirror_resync`, `nvmf_subsystems`, `host_list`, `volume_checksums`
//! ([`verify`]), the `cdp_*` methods (views and restores run as child processes: [`cdp_jobs`]),
//! and the run-time changes of volumes, exports, subsystems and targets ([`admin`],
//! [`admin_front`]): the only methods that change the daemon's tables.
//! [`metrics`] serves the same published state to Prometheus.

pub mod admin;
pub mod admin_call;
pub mod admin_front;
pub mod build;
pub mod cdp_admin;
pub mod cdp_jobs;
pub mod config;
pub mod metrics;
pub mod strict_json;
pub mod switchover;
pub mod verify;

use crate::control::config::Config;
use crate::frontend::nbd::NbdExports;
use crate::frontend::nvmf::NvmfShared;
use crate::layer::mirror::MirrorInfo;
use crate::runtime::Shared;

/// What the control socket reads: the runtime, the front ends' and the layers' state.
pub struct ControlCx {
    /// Runtime state (volumes, reactors' counters, listeners).
    pub rt: Arc<Shared>,
    /// NBD exports.
    pub nbd_exports: Arc<NbdExports>,
    /// NVMe-oF subsystems and controllers.
    pub nvmf: Arc<NvmfShared>,
    /// iSCSI targets (`None`: a daemon without the iSCSI front end's state).
    pub iscsi: Option<Arc<crate::frontend::iscsi::IscsiShared>>,
    /// Serialises the run-time changes ([`admin`]): one at a time, checks and change together.
    pub admin: std::sync::Mutex<admin::AdminState>,
    /// Mirrored volumes.
    pub mirrors: Vec<MirrorInfo>,
    /// Volumes with continuous data protection (switched on at start or at run time; a
    /// journal switched off at run time stays listed, its history readable).
    pub cdp: Arc<std::sync::RwLock<Vec<crate::layer::cdp::CdpInfo>>>,
    /// The CDP helper threads' lists (next segments, retention), changed at run time.
    pub cdp_lists: cdp_admin::CdpLists,
    /// The configured volumes (`cdp_enable` takes a volume's `[volume.cdp]` settings and
    /// group from here when the request does not give them).
    pub volume_configs: Vec<config::VolumeConfig>,
    /// The daemon's state files ([`config::Config::state_files`]): no restore output or
    /// run-time volume's file is one of them.
    pub state_files: Vec<PathBuf>,
    /// Views and restores started through the control socket ([`cdp_jobs`]).
    pub cdp_jobs: cdp_jobs::CdpJobs,
    /// The runtime service index of the checksum executors ([`verify::ChecksumService`]);
    /// `None`: `volume_checksums` is refused.
    pub checksums: Option<u32>,
}
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// Longest request line accepted (a request is a few hundred bytes).
const MAX_LINE: usize = 64 * 1024;

/// Control clients served at once; more are refused with an error line.
pub const MAX_CLIENTS: usize = 16;

/// A control client that sends nothing for this long is disconnected.
pub const IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// The pause after a failed accept (out of descriptors): the control thread never spins.
const ACCEPT_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

/// A running control socket.
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// The serving thread, while it runs (for placing it off the reactors' cores).
    pub fn pthread(&self) -> Option<libc::pthread_t> {
        use std::os::unix::thread::JoinHandleExt;
        self.thread.as_ref().map(|t| t.as_pthread_t())
    }

    /// Listen on `path` ([`bind_socket`]: a stale socket file there is replaced; the socket
    /// is 0660 with the group `cfg.control.group`).
    pub fn start(path: &Path, shared: Arc<ControlCx>, cfg: Config) -> std::io::Result<Self> {
        let group = cfg
            .control
            .group
            .as_deref()
            .map(resolve_group)
            .transpose()?;
        let listener = bind_socket(path, group)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let clients = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                let mut last_warn: Option<std::time::Instant> = None;
                for conn in listener.incoming() {
                    if stop2.load(Ordering::Relaxed) {
                        break;
                    }
                    let mut conn = match conn {
                        Ok(c) => c,
                        Err(e) => {
                            // Out of descriptors (EMFILE, ENFILE) or memory: the client
                            // stays in the backlog and accept fails again at once; pause
                            // instead of spinning on a core the reactors share.
                            let now = std::time::Instant::now();
                            if last_warn.is_none_or(|t| now.duration_since(t) >= IDLE) {
                                tracing::warn!(error = %e, "control: cannot accept a client; retrying");
                                last_warn = Some(now);
                            }
                            std::thread::sleep(ACCEPT_RETRY);
                            continue;
                        }
                    };
                    // One thread per client, at most MAX_CLIENTS at a time: the others are
                    // told so and closed, and an idle client is dropped after IDLE.
                    if clients.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
                        clients.fetch_sub(1, Ordering::SeqCst);
                        tracing::warn!(max = MAX_CLIENTS, "control: too many clients; refusing one");
                        let busy = json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32000,
                            "message": format!("too many control clients (at most {MAX_CLIENTS} at a time); try again")}});
                        let _ = writeln!(conn, "{busy}");
                        continue;
                    }
                    let _ = conn.set_read_timeout(Some(IDLE));
                    let _ = conn.set_write_timeout(Some(IDLE));
                    let shared = Arc::clone(&shared);
                    let cfg = cfg.clone();
                    let clients = Arc::clone(&clients);
                    let stopping = Arc::clone(&stop2);
                    let spawned = std::thread::Builder::new()
                        .name("control-conn".into())
                        .spawn({
                            let clients = Arc::clone(&clients);
                            move || {
                                serve(conn, &shared, &cfg, &stopping);
                                clients.fetch_sub(1, Ordering::SeqCst);
                            }
                        });
                    if spawned.is_err() {
                        clients.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }

    /// Stop listening and remove the socket file. A client still connected gets error
    /// `-32000` ("the daemon is stopping") for any further request, and is closed.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = UnixStream::connect(&self.path); // wake the accept loop
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The gid of group `name` (a name, or a number).
pub fn resolve_group(name: &str) -> std::io::Result<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let cname = std::ffi::CString::new(name)
        .map_err(|_| std::io::Error::other(format!("control.group {name:?}: bad name")))?;
    // SAFETY: `group` is plain data (integers and pointers) for which all zeroes is valid.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` outlives it and `out` points into it
    // or is null.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut out,
        )
    };
    if rc != 0 || out.is_null() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("control.group {name:?}: no such group"),
        ));
    }
    Ok(grp.gr_gid)
}

fn chown_group(path: &Path, gid: Option<u32>) -> std::io::Result<()> {
    match gid {
        Some(g) => std::os::unix::fs::chown(path, None, Some(g)).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot give {} to group {g}: {e}", path.display()),
            )
        }),
        None => Ok(()),
    }
}

/// Refuse `path` unless this (effective) user owns it: a socket or directory of another user
/// could be swapped or watched by that user.
fn check_owner(path: &Path, meta: &std::fs::Metadata, what: &str) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "control {what} {} is owned by uid {}, not by this user (uid {me}): refusing to start; remove it or set control.socket elsewhere",
                path.display(),
                meta.uid()
            ),
        ));
    }
    Ok(())
}

/// Bind the control socket at `path`. Its directory is created with mode 0750 (and group
/// `group`) when missing; an existing directory, or an existing file at `path`, owned by
/// another user is refused. A live socket there is refused (another daemon); a stale one is
/// replaced. The socket gets mode 0660 and group `group`.
pub fn bind_socket(path: &Path, group: Option<u32>) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let ctx = |what: String| {
        move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{what}: {e}"))
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match std::fs::symlink_metadata(dir) {
        Ok(m) => {
            check_owner(dir, &m, "socket directory")?;
            if !m.is_dir() {
                return Err(std::io::Error::other(format!(
                    "control socket directory {} is not a directory",
                    dir.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(up) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(up).map_err(ctx(format!("creating {}", up.display())))?;
            }
            std::fs::DirBuilder::new()
                .mode(0o750)
                .create(dir)
                .map_err(ctx(format!("creating {}", dir.display())))?;
            // The umask may have taken bits away; the mode is exactly 0750.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))?;
            chown_group(dir, group)?;
        }
        Err(e) => {
            return Err(ctx(format!("control socket directory {}", dir.display()))(
                e,
            ));
        }
    }
    if let Ok(m) = std::fs::symlink_metadata(path) {
        check_owner(path, &m, "socket")?;
        if UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use by another daemon", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path).map_err(ctx(format!("binding {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    chown_group(path, group)?;
    Ok(listener)
}

fn serve(conn: UnixStream, shared: &ControlCx, cfg: &Config, stopping: &AtomicBool) {
    let Ok(write_half) = conn.try_clone() else {
        return;
    };
    let mut out = write_half;
    let mut reader = BufReader::new(conn);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader
            .by_ref()
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if stopping.load(Ordering::SeqCst) {
            // The daemon stops its reactors and children next: nothing asked now could be
            // done, and a view or restore started now would outlive it.
            let refused = json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32000, "message": "the daemon is stopping: no request is served any more"}});
            let _ = writeln!(out, "{refused}");
            return;
        }
        let reply = if line.last() != Some(&b'\n') && line.len() > MAX_LINE {
            // One answer for the whole over-long line, given first (also to a client that
            // sent no newline and stopped); the rest of the line is then read and dropped,
            // never taken for requests of its own.
            let refused = json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32600, "message": format!("request line longer than {} KiB: refused", MAX_LINE / 1024)}});
            if writeln!(out, "{refused}").is_err() || skip_line(&mut reader).is_err() {
                return;
            }
            continue;
        } else {
            match std::str::from_utf8(&line) {
                Ok(text) => handle_line(text.trim(), shared, cfg),
                Err(e) => {
                    json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": format!("parse error: the request is not UTF-8 ({e})")}})
                }
            }
        };
        if writeln!(out, "{reply}").is_err() {
            return;
        }
    }
}

/// Read and drop the rest of the current line (through its newline), a buffer at a time.
fn skip_line(reader: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    }
}

/// Answer one JSON-RPC request line.
pub fn handle_line(line: &str, shared: &ControlCx, cfg: &Config) -> Value {
    let req: Value = match strict_json::parse(line) {
        Ok(v) => v,
        // Valid JSON, but which of the values is meant is not known: an invalid request.
        Err(e) if e.to_string().starts_with(strict_json::TWICE) => {
            return json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32600, "message": format!("invalid request: {e}; give each key once (nothing was changed)")}});
        }
        Err(e) => {
            return json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": format!("parse error: {e}")}});
        }
    };
    let id = req.get("id").cloned().unwrap_or(Value::Null);
    let Some(method) = req.get("method").and_then(Value::as_str) else {
        return json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32600, "message": "missing method"}});
    };
    if let Err(m) = check_params(method, req.get("params")) {
        return json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32602, "message": m}});
    }
    if let Some(r) = cdp_call(method, req.get("params"), shared) {
        return match r {
            Ok(v) => json!({"jsonrpc": "2.0", "id": id, "result": v}),
            Err(m) => json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32602, "message": m}}),
        };
    }
    if let Some(r) = admin_call::call(method, req.get("params"), shared) {
        return match r {
            Ok(v) => json!({"jsonrpc": "2.0", "id": id, "result": v}),
            Err((code, m)) => {
                json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": m}})
            }
        };
    }
    if method == "volume_checksums" {
        return match checksums(req.get("params"), shared) {
            Ok(v) => json!({"jsonrpc": "2.0", "id": id, "result": v}),
            Err(m) => json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32602, "message": m}}),
        };
    }
    if method == "host_list" {
        return match host_list(req.get("params"), shared) {
            Ok(v) => json!({"jsonrpc": "2.0", "id": id, "result": v}),
            Err(m) => json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32602, "message": m}}),
        };
    }
    if method == "mirror_switchover" {
        return match switchover::switchover(req.get("params"), shared, cfg) {
            Ok(v) => json!({"jsonrpc": "2.0", "id": id, "result": v}),
            Err((code, m)) => {
                json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": m}})
            }
        };
    }
    if method == "reactor_set_wait" {
        return match set_wait(req.get("params"), shared, cfg) {
            Ok(v) => json!({"jsonrpc": "2.0", "id": id, "result": v}),
            Err(m) => json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32602, "message": m}}),
        };
    }
    if method == "mirror_takeover" {
        return match takeover(req.get("params"), shared, cfg) {
            Ok(v) => json!({"jsonrpc": "2.0", "id": id, "result": v}),
            Err((code, m)) => {
                json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": m}})
            }
        };
    }
    if method == "mirror_resync" {
        return match resync(req.get("params"), shared) {
            Ok(v) => json!({"jsonrpc": "2.0", "id": id, "result": v}),
            Err(m) => json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32602, "message": m}}),
        };
    }
    match call(method, shared, cfg) {
        Some(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        None => {
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": format!("no method {method:?}")}})
        }
    }
}

/// The parameters each method takes (docs/control.md); `None` for an unknown method (answered
/// `-32601` later).
fn known_params(method: &str) -> Option<&'static [&'static str]> {
    Some(match method {
        "daemon_info" | "volume_list" | "export_list" | "reactor_stats" | "volume_stats"
        | "mirror_status" | "cdp_status" | "cdp_jobs" | "nvmf_subsystems" => &[],
        "reactor_set_wait" => &["wait", "spin_us", "reactor"],
        "mirror_switchover" => &["volume", "group", "to", "wait_s"],
        "mirror_resync" => &["volume", "pause", "rate_bytes_per_s"],
        "mirror_takeover" | "cdp_disable" | "host_list" => &["volume"],
        "volume_checksums" => &["volume", "region", "offset", "length"],
        "cdp_bookmark" => &["volume", "group", "name", "replace"],
        "cdp_bookmark_delete" => &["volume", "group", "name"],
        "cdp_bookmarks" => &["volume", "group"],
        "cdp_view_open" => &[
            "volume", "group", "time_ns", "seq", "bookmark", "nbd", "nvmf", "iscsi", "sandbox",
            "name",
        ],
        "cdp_view_close" => &["id"],
        "cdp_restore" => &["volume", "group", "time_ns", "seq", "bookmark", "out"],
        "cdp_enable" => &[
            "volume",
            "dir",
            "segment_size",
            "retention_age",
            "retention_bytes",
            "prezero",
            "sync",
            "group",
            "wait",
        ],
        // The layer keys are named so that their refusal says where they belong.
        "volume_create" => &[
            "name",
            "backend",
            "size",
            "block_size",
            "path",
            "create",
            "mirror",
            "cdp",
            "group",
            "leader",
            "view",
        ],
        "volume_delete" => &["name"],
        "nbd_export_add" => &["name", "volume", "read_only", "description"],
        "nbd_export_remove" => &["name", "force"],
        "nvmf_subsystem_add" => &["nqn", "allowed_hosts"],
        "nvmf_subsystem_remove" => &["nqn", "force"],
        "nvmf_namespace_add" => &["nqn", "volume", "nsid", "force"],
        "nvmf_namespace_remove" => &["nqn", "nsid", "force"],
        "nvmf_host_allow" => &["nqn", "host"],
        "nvmf_host_disallow" => &["nqn", "host", "force"],
        "iscsi_target_add" => &["iqn", "allowed_initiators", "chap_user", "chap_secret"],
        "iscsi_target_remove" => &["iqn", "force"],
        "iscsi_lun_add" => &["iqn", "volume", "lun", "force"],
        "iscsi_lun_remove" => &["iqn", "lun", "force"],
        _ => return None,
    })
}

/// Refuse params that are not an object (or absent/null), and any parameter `method` does
/// not take: a misspelt optional parameter (`"readonly"`) would otherwise be left out, and
/// its default applied, without a word.
fn check_params(method: &str, params: Option<&Value>) -> Result<(), String> {
    let Some(known) = known_params(method) else {
        return Ok(());
    };
    match params {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Object(o)) => match o.keys().find(|k| !known.contains(&k.as_str())) {
            None => Ok(()),
            Some(k) if known.is_empty() => Err(format!(
                "unknown parameter {k:?}: {method} takes no parameters"
            )),
            Some(k) => Err(format!(
                "unknown parameter {k:?}: {method} takes {}",
                known.join(", ")
            )),
        },
        Some(_) => Err(format!(
            "params must be an object (named parameters), or left out; {method} takes {}",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )),
    }
}

/// How long a `volume_checksums` call waits for its reactor (a call covers at most
/// [`verify::MAX_CALL_BYTES`], read in seconds even from a slow disk).
const CHECKSUMS_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// `volume_checksums {"volume": NAME, "region": BYTES, "offset": BYTES, "length": BYTES}`
/// (offset default 0, length default to the end): a CRC32C per region of this site's own
/// replica of a mirrored volume, read on the volume's home reactor ([`verify`]). Refused for
/// an unmirrored volume and while this site's replica is not a replica to compare
/// (resyncing, waiting, failed).
fn checksums(params: Option<&Value>, shared: &ControlCx) -> Result<Value, String> {
    let p = params.ok_or(
        "params: {\"volume\": NAME, \"region\": BYTES, \"offset\": BYTES, \"length\": BYTES}",
    )?;
    let name = p
        .get("volume")
        .and_then(Value::as_str)
        .ok_or("params must name the volume: {\"volume\": NAME}")?;
    let num = |k: &str| -> Result<Option<u64>, String> {
        match p.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("\"{k}\" must be a whole number of bytes")),
        }
    };
    let region = num("region")?.ok_or("params need the region size: {\"region\": BYTES}")?;
    let offset = num("offset")?.unwrap_or(0);
    let length = num("length")?;
    let vol = volume_index(shared, name)?;
    let m = shared
        .mirrors
        .iter()
        .find(|m| m.vol == vol)
        .ok_or_else(|| {
            format!("volume {name:?} is not mirrored: there is no second replica to compare")
        })?;
    let snap = m.stats.snapshot(name, m.leader);
    let why = match snap.state {
        "resyncing" => Some(
            "this site's replica is being resynced from its peer: it is incomplete until the resync ends",
        ),
        "waiting" => Some(
            "this site waits for its peer to decide whether its replica holds every acknowledged write",
        ),
        "failed" => Some("the volume is stopped at this site (see mirror_status's failure)"),
        _ => None,
    };
    if let Some(why) = why {
        return Err(format!(
            "volume {name:?} is {} at this site: {why}",
            snap.state
        ));
    }
    let v = shared
        .rt
        .volumes
        .get(vol)
        .ok_or_else(|| format!("no volume named {name:?}"))?;
    let info = &v.info;
    let r = verify::check(
        info.size,
        u64::from(info.block_size),
        offset,
        length,
        region,
    )?;
    let service = shared
        .checksums
        .ok_or("checksums are not served by this daemon")?;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let mailbox = shared
        .rt
        .mailboxes
        .get(m.home)
        .ok_or("the volume's home reactor is not running")?;
    mailbox.send(crate::runtime::Msg::Note {
        to: crate::runtime::NoteTo::Service(service),
        note: Box::new(verify::Job {
            vol,
            offset: r.offset,
            length: r.length,
            region: r.region,
            reply: tx,
        }),
    });
    let crcs = match rx.recv_timeout(CHECKSUMS_WAIT) {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(format!("volume {name:?}: {e}")),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            return Err(format!(
                "volume {name:?}: no answer from its reactor within {} s",
                CHECKSUMS_WAIT.as_secs()
            ));
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            return Err(format!("volume {name:?}: the daemon is stopping"));
        }
    };
    Ok(json!({
        "volume": name,
        "offset": r.offset,
        "length": r.length,
        "region": r.region,
        "block_size": info.block_size,
        "size": info.size,
        "state": snap.state,
        "session": snap.session,
        "crc32c": crcs,
    }))
}

/// `host_list {"volume": NAME}` (params optional): the connected hosts (every front end's
/// connections, from the runtime's hosts registry), oldest first; with a volume, only the
/// connections that reach it.
fn host_list(params: Option<&Value>, shared: &ControlCx) -> Result<Value, String> {
    let filter = match params.filter(|p| !p.is_null()) {
        None => None,
        Some(p) => match p.get("volume") {
            None => None,
            Some(v) => {
                let name = v.as_str().ok_or("\"volume\" must be a volume's name")?;
                let vol = volume_index(shared, name)?;
                Some(vol)
            }
        },
    };
    let vname = |i: &usize| shared.rt.volumes.get_any(*i).map(|v| v.name.clone());
    Ok(Value::Array(
        shared
            .rt
            .hosts
            .list()
            .into_iter()
            .filter(|(_, r)| filter.is_none_or(|f| r.reaches(f)))
            .map(|(id, r)| {
                json!({
                    "id": id,
                    "proto": r.proto,
                    "reactor": r.reactor,
                    "conn": r.conn,
                    "peer": r.peer.map(|a| a.to_string()),
                    "host": r.host,
                    "target": r.target,
                    "volumes": r.volumes().iter().filter_map(vname).collect::<Vec<_>>(),
                    "queue": r.queue,
                    "controller": r.controller,
                    "site": r.site,
                    "inflight": r.inflight(),
                })
            })
            .collect(),
    ))
}

/// The smallest resync rate an operator may set (as `[mirror] resync_rate`'s minimum).
const MIN_RESYNC_RATE: u64 = 1 << 20;

/// `mirror_resync {"volume": NAME, "pause": BOOL, "rate_bytes_per_s": N}`: pause or resume
/// this site's resync copies (the last pass, which holds new writes, is never paused), or set
/// their rate (0: back to the configured `resync_rate`). Either field may be left out; the
/// answer is the settings now.
fn resync(params: Option<&Value>, shared: &ControlCx) -> Result<Value, String> {
    let p = params
        .ok_or("params: {\"volume\": NAME, \"pause\": true|false, \"rate_bytes_per_s\": N}")?;
    let name = p
        .get("volume")
        .and_then(Value::as_str)
        .ok_or("params must name the volume: {\"volume\": NAME}")?;
    let vol = volume_index(shared, name)?;
    let m = mirror_of(shared, vol, name)?;
    let pause = match p.get("pause") {
        None => None,
        Some(v) => Some(v.as_bool().ok_or("\"pause\" must be true or false")?),
    };
    let rate = match p.get("rate_bytes_per_s") {
        None => None,
        Some(v) => {
            let r = v
                .as_u64()
                .ok_or("\"rate_bytes_per_s\" must be a whole number of bytes per second")?;
            if r != 0 && r < MIN_RESYNC_RATE {
                return Err(format!(
                    "\"rate_bytes_per_s\" must be 0 (the configured rate) or at least {MIN_RESYNC_RATE}"
                ));
            }
            Some(r)
        }
    };
    if let Some(r) = rate {
        m.stats.resync_rate_limit.store(r, Ordering::SeqCst);
        tracing::warn!(
            volume = name,
            rate_bytes_per_s = r,
            "mirror: operator set the resync rate (0: the configured one)"
        );
    }
    if let Some(pause) = pause {
        m.stats.resync_paused.store(pause, Ordering::SeqCst);
        tracing::warn!(
            volume = name,
            pause,
            "mirror: operator paused or resumed the resync"
        );
    }
    let limit = m.stats.resync_rate_limit.load(Ordering::SeqCst);
    Ok(json!({
        "volume": name,
        "paused": m.stats.resync_paused.load(Ordering::SeqCst),
        "rate_limit_bytes_per_s": (limit > 0).then_some(limit),
    }))
}

/// The CDP volumes a request names: `{"volume": NAME}` or `{"group": NAME}`.
fn cdp_targets(
    params: Option<&Value>,
    shared: &ControlCx,
) -> Result<Vec<crate::layer::cdp::CdpInfo>, String> {
    let p = params.ok_or("params must name a volume or a group: {\"volume\": NAME}")?;
    let (by_group, name) = match (
        p.get("volume").and_then(Value::as_str),
        p.get("group").and_then(Value::as_str),
    ) {
        (Some(v), None) => (false, v),
        (None, Some(g)) => (true, g),
        _ => return Err("params must name one volume or one group".into()),
    };
    let v: Vec<_> = shared
        .cdp
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|c| {
            if by_group {
                c.group == name
            } else {
                shared.rt.volumes.name(c.vol) == name
            }
        })
        .cloned()
        .collect();
    if v.is_empty() {
        return Err(format!(
            "no {} named {name:?} has continuous data protection",
            if by_group { "group" } else { "volume" }
        ));
    }
    Ok(v)
}

/// The CDP methods that take parameters; `None` for other methods.
///
/// - `cdp_bookmark {"volume"|"group": NAME, "name": BOOKMARK}`: a bookmark at this moment (one
///   site time for every volume of a group), kept past retention until deleted;
/// - `cdp_bookmark_delete {"volume"|"group": NAME, "name": BOOKMARK}`;
/// - `cdp_bookmarks {"volume"|"group": NAME}`: the bookmarks per volume.
fn cdp_call(
    method: &str,
    params: Option<&Value>,
    shared: &ControlCx,
) -> Option<Result<Value, String>> {
    use crate::layer::cdp::{bookmark, clock};
    match method {
        "cdp_jobs" => return Some(Ok(shared.cdp_jobs.list())),
        "cdp_view_close" => {
            return Some(
                params
                    .and_then(|p| p.get("id"))
                    .and_then(Value::as_u64)
                    .ok_or_else(|| "params need the \"id\" cdp_view_open returned".to_string())
                    .and_then(|id| shared.cdp_jobs.close(id)),
            );
        }
        "cdp_view_open" | "cdp_restore" => {
            return Some((|| {
                let p = params.ok_or("params must name a volume: {\"volume\": NAME, ...}")?;
                if p.get("group").is_some() && method == "cdp_restore" {
                    return Err("a restore names one volume (\"volume\"), not a group: ask once per volume with the same \"time_ns\"".to_string());
                }
                let vols = cdp_targets(Some(p), shared)?;
                if method == "cdp_view_open" {
                    let members: Vec<_> = vols
                        .iter()
                        .map(|c| (c, shared.rt.volumes.name(c.vol)))
                        .collect();
                    let label = match p.get("group").and_then(Value::as_str) {
                        Some(g) => format!("group {g}"),
                        None => members[0].1.clone(),
                    };
                    shared.cdp_jobs.view_open(&members, &label, p)
                } else {
                    let c = &vols[0];
                    let vname = shared.rt.volumes.name(c.vol);
                    // The bookmark is checked now too (the answer comes before the child
                    // runs); the child reads it again.
                    if let Some(b) = p.get("bookmark").and_then(Value::as_str)
                        && !bookmark::load(&c.dir)?.contains_key(b)
                    {
                        return Err(format!("volume {vname:?} has no bookmark named {b:?}"));
                    }
                    let histories: Vec<_> = (shared.cdp.read().unwrap_or_else(|e| e.into_inner()))
                        .iter()
                        .map(|c| c.dir.clone())
                        .chain(
                            shared
                                .volume_configs
                                .iter()
                                .filter_map(|v| Some(v.cdp.as_ref()?.dir.clone())),
                        )
                        .collect();
                    shared
                        .cdp_jobs
                        .restore(c, &vname, p, &histories, &shared.state_files)
                }
            })());
        }
        "cdp_bookmark" | "cdp_bookmark_delete" | "cdp_bookmarks" => {}
        _ => return None,
    }
    Some((|| {
        let vols = cdp_targets(params, shared)?;
        let name = params.and_then(|p| p.get("name")).and_then(Value::as_str);
        let vname = |c: &crate::layer::cdp::CdpInfo| shared.rt.volumes.name(c.vol);
        match method {
            "cdp_bookmark" => {
                let name = name.ok_or("params need the bookmark's \"name\"")?;
                if let Some(c) = vols.iter().find(|c| {
                    c.device.live.as_ref().is_some_and(|l| {
                        !l.whole.load(Ordering::Relaxed) && l.failed.get().is_none()
                    }) && !c.stats.off.load(Ordering::Relaxed)
                }) {
                    return Err(format!(
                        "volume {:?} is catching up (CDP was switched on at run time): its history is not whole yet (cdp_status)",
                        vname(c)
                    ));
                }
                if let Some(c) = vols.iter().find(|c| c.stats.off.load(Ordering::Relaxed)) {
                    return Err(format!(
                        "CDP is switched off on volume {:?}: its history ended at its last time mark (cdp_enable switches it on again)",
                        vname(c)
                    ));
                }
                if let Some(c) = vols
                    .iter()
                    .find(|c| c.stats.stopped.load(Ordering::Relaxed))
                {
                    return Err(format!(
                        "the journal of volume {:?} is stopped (DEGRADED, cdp_status): no point after its stop can be restored, so a bookmark now would name one that cannot; the next start journals the changed regions again",
                        vname(c)
                    ));
                }
                if let Some(c) = vols
                    .iter()
                    .find(|c| c.stats.unvouched.load(Ordering::Relaxed) != 0)
                {
                    return Err(format!(
                        "volume {:?}'s replica at this site is not vouched for by the mirror (down, fenced or being resynced; cdp_status: vouched false): its history is whole only up to sequence {}, so a bookmark now would name a point inside a gap that can never be restored; set it at the peer, or here once vouched for again",
                        vname(c),
                        c.stats.unvouched.load(Ordering::Relaxed) - 1
                    ));
                }
                let replace = match params.and_then(|p| p.get("replace")) {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(b)) => *b,
                    Some(v) => return Err(format!("\"replace\" must be true or false, not {v}")),
                };
                // A group's bookmark is set on every volume or (a name taken) on none.
                if !replace {
                    for c in &vols {
                        if let Some(t) = bookmark::load(&c.dir)?.get(name) {
                            return Err(format!(
                                "bookmark {name:?} exists on volume {:?} (time {t} ns): delete it first, or give \"replace\": true to move it",
                                vname(c)
                            ));
                        }
                    }
                }
                let t = clock::now();
                // On every volume or none, also against a writer that set the name after
                // the check above.
                let dirs: Vec<&std::path::Path> = vols.iter().map(|c| c.dir.as_path()).collect();
                bookmark::set_all(&dirs, name, t, replace)?;
                tracing::info!(bookmark = name, time = t, "cdp: bookmark set");
                Ok(
                    json!({"name": name, "time_ns": t, "volumes": vols.iter().map(vname).collect::<Vec<_>>()}),
                )
            }
            "cdp_bookmark_delete" => {
                let name = name.ok_or("params need the bookmark's \"name\"")?;
                let mut deleted = Vec::new();
                for c in &vols {
                    if bookmark::delete(&c.dir, name)? {
                        deleted.push(vname(c));
                    }
                }
                if deleted.is_empty() {
                    return Err(format!("no bookmark named {name:?}"));
                }
                Ok(json!({"name": name, "volumes": deleted}))
            }
            _ => {
                let mut out = Vec::new();
                for c in &vols {
                    let b = bookmark::load(&c.dir)?;
                    out.push(json!({"volume": vname(c), "bookmarks": b}));
                }
                Ok(Value::Array(out))
            }
        }
    })())
}

/// `mirror_takeover {"volume": NAME}`: a site waiting for a peer that will not come back asks
/// the witness to make it the volume's survivor (the witness still grants one site only).
/// The index of the volume named `name`.
fn volume_index(shared: &ControlCx, name: &str) -> Result<usize, String> {
    shared
        .rt
        .volumes
        .find(name)
        .ok_or_else(|| format!("no volume named {name:?}"))
}

/// The mirror of volume `vol` (named `name`).
fn mirror_of<'a>(shared: &'a ControlCx, vol: usize, name: &str) -> Result<&'a MirrorInfo, String> {
    shared
        .mirrors
        .iter()
        .find(|m| m.vol == vol)
        .ok_or_else(|| format!("volume {name:?} is not mirrored"))
}

/// JSON-RPC error code of a `mirror_takeover` refused for the volume's state at this site (in
/// session with its peer, a survivor, resyncing, failed): nothing was asked.
pub const TAKEOVER_NOT_NOW: i64 = -32012;

/// `mirror_takeover {"volume": NAME}`: ask the witness for the volume's group as a takeover.
fn takeover(
    params: Option<&Value>,
    shared: &ControlCx,
    cfg: &Config,
) -> Result<Value, (i64, String)> {
    let bad = |m: String| (-32602, m);
    let name = params
        .and_then(|p| p.get("volume"))
        .and_then(Value::as_str)
        .ok_or_else(|| bad("params must name the volume: {\"volume\": NAME}".into()))?;
    let vol = volume_index(shared, name).map_err(bad)?;
    let m = mirror_of(shared, vol, name).map_err(bad)?;
    if cfg.mirror.as_ref().and_then(|c| c.witness).is_none() {
        return Err(bad(
            "no witness is configured: a takeover needs the witness's grant".into(),
        ));
    }
    // Only where the engine asks for it (layer/mirror/engine/survivor.rs): a request left at
    // a survivor stayed pending while it served alone (the engine now drops it there too).
    let state = m.stats.snapshot(name, m.leader).state;
    let why = match state {
        "waiting" | "fenced" | "down" | "diverged" => None,
        "up" => Some("in session with its peer"),
        "survivor" => Some("serving alone on the witness's grant already"),
        "resyncing" => Some("its replica is being resynced"),
        "failed" => Some("the volume is stopped at this site (see mirror_status's failure)"),
        _ => Some("not a state a takeover is asked from"),
    };
    if let Some(why) = why {
        return Err((
            TAKEOVER_NOT_NOW,
            format!(
                "volume {name:?} is {state} at this site ({why}): a takeover is for a site that waits for its peer, holds writes with the link down, is fenced or diverged (mirror_status shows the state); nothing was asked"
            ),
        ));
    }
    m.stats.takeover.store(true, Ordering::SeqCst);
    tracing::warn!(
        volume = name,
        "mirror: operator asked this site to take the volume over"
    );
    Ok(json!({"volume": name, "asked": true}))
}

fn call(method: &str, shared: &ControlCx, cfg: &Config) -> Option<Value> {
    Some(match method {
        "daemon_info" => json!({
            "version": env!("CARGO_PKG_VERSION"),
            "mirror": cfg.mirror.as_ref().map(|m| json!({
                "site": m.site,
                "peer_site": m.peer_site,
                "site_id": m.site_id(),
                "witness": m.witness.map(|w| w.to_string()),
            })),
            "reactors": cfg.reactor.cores.len(),
            "cores": cfg.reactor.cores,
            "wait": cfg.reactor.wait,
            "listeners": shared.rt.listeners.iter().map(|l| json!({"proto": l.acceptor.proto(), "addr": l.addr.to_string()})).collect::<Vec<_>>(),
            "site_time_ns": crate::layer::cdp::clock::now(),
        }),
        "volume_list" => Value::Array(
            shared
                .rt
                .volumes
                .list()
                .into_iter()
                .map(|(_, v)| json!({"name": v.name, "size": v.info.size, "block_size": v.info.block_size, "stack": v.info.kind}))
                .collect(),
        ),
        "export_list" => Value::Array(
            shared
                .nbd_exports
                .snapshot()
                .iter()
                .map(|e| {
                    // Read-only as clients see it: configured so, or a read-only volume.
                    let ro = e.read_only || shared.rt.volumes.get(e.volume).is_some_and(|v| v.read_only());
                    json!({"proto": "nbd", "name": e.name, "volume": shared.rt.volumes.name(e.volume), "read_only": ro, "runtime": e.runtime})
                })
                .collect(),
        ),
        "nvmf_subsystems" => {
            let nv = &*shared.nvmf;
            json!({
                "listen": nv.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "controllers": nv.registry.len(),
                "cntlid_range": [nv.registry.ids().start(), nv.registry.ids().end()],
                "first_port_id": nv.first_port_id,
                "subsystems": nv.subs().clone().iter().map(|s| json!({
                    "nqn": s.nqn,
                    "serial": s.serial,
                    "allowed_hosts": s.allowed_hosts,
                    "runtime": s.runtime,
                    "namespaces": s.namespaces.iter().map(|n| json!({
                        "nsid": n.nsid,
                        "volume": shared.rt.volumes.name(n.volume),
                        "ana_group": n.ana_group,
                        "ana_state": shared.rt.volumes.get_any(n.volume).map(|v| crate::frontend::nvmf::status::ana_state(v.path.get())),
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        }
        "reactor_stats" => Value::Array(
            shared
                .rt
                .stats
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let mut v = serde_json::to_value(s.snapshot()).unwrap_or(Value::Null);
                    v["id"] = json!(i);
                    v["core"] = json!(cfg.reactor.cores.get(i));
                    v["open_conns"] = json!(s.open_conns.load(Ordering::Relaxed));
                    let (wait, spin) = wait_view(s.wait.current());
                    v["wait"] = wait;
                    v["spin_us"] = spin;
                    v
                })
                .collect(),
        ),
        "volume_stats" => {
            let per_reactor: Vec<_> = shared.rt.stats.iter().map(|s| s.volumes()).collect();
            Value::Array(
                shared
                    .rt
                    .volumes
                    .list()
                    .into_iter()
                    .map(|(i, v)| {
                        let total = per_reactor
                            .iter()
                            .filter_map(|r| r.get(i))
                            .fold(crate::runtime::VolCounters::default(), |a, b| a.add(b));
                        let mut j = serde_json::to_value(total).unwrap_or(Value::Null);
                        j["name"] = json!(v.name);
                        j
                    })
                    .collect(),
            )
        }
        "mirror_status" => Value::Array(
            shared
                .mirrors
                .iter()
                .filter_map(|m| {
                    let name = &shared.rt.volumes.name(m.vol);
                    let mut j = serde_json::to_value(m.stats.snapshot(name, m.leader)).ok()?;
                    j["home_reactor"] = json!(m.home);
                    j["group"] = json!(m.group);
                    j["path_state"] = json!(shared.rt.volumes.get_any(m.vol).map(|v| path_state_name(v.path.get())));
                    let me = cfg.mirror.as_ref().map_or(0, |c| c.site_id());
                    j["witness"] = m
                        .failover
                        .as_deref()
                        .map_or(Value::Null, |f| witness_view(f, me));
                    Some(j)
                })
                .collect(),
        ),
        "cdp_status" => Value::Array(
            shared
                .cdp
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|c| {
                    let name = &shared.rt.volumes.name(c.vol);
                    let mut j = c.snapshot();
                    j["volume"] = json!(name);
                    j
                })
                .collect(),
        ),
        _ => return None,
    })
}

/// How long `reactor_set_wait` waits for the reactors to take the new policy (each reads it
/// at its next turn, and is woken for it).
const SET_WAIT_APPLY: std::time::Duration = std::time::Duration::from_secs(2);

/// A reactor's running policy as `reactor_stats` shows it: its name (null before the reactor
/// started) and, for `adaptive`, its spin in µs (else null).
fn wait_view(p: Option<crate::runtime::WaitPolicy>) -> (Value, Value) {
    use crate::runtime::WaitPolicy;
    match p {
        None => (Value::Null, Value::Null),
        Some(p) => (
            json!(crate::runtime::wait::name(p)),
            match p {
                WaitPolicy::Adaptive(d) => json!(d.as_micros() as u64),
                _ => Value::Null,
            },
        ),
    }
}

/// `reactor_set_wait {"wait": "poll"|"adaptive"|"interrupt", "spin_us"?: N, "reactor"?: N}`:
/// every reactor (or reactor N) runs that wait policy from its next turn on
/// ([`crate::runtime::wait`]); `spin_us` (adaptive only, default `[reactor] spin_us`). Waits
/// up to [`SET_WAIT_APPLY`] for each reactor to take it and answers, per reactor, the policy
/// before and now and whether it was applied. Not persisted: a restart runs the configured
/// policy again.
fn set_wait(params: Option<&Value>, shared: &ControlCx, cfg: &Config) -> Result<Value, String> {
    let usage = "params: {\"wait\": \"poll\"|\"adaptive\"|\"interrupt\", \"spin_us\": N (adaptive only), \"reactor\": N (default: all)}";
    let p = params
        .filter(|p| p.is_object())
        .ok_or_else(|| usage.to_string())?;
    if let Some(k) = p.as_object().and_then(|o| {
        o.keys()
            .find(|k| !matches!(k.as_str(), "wait" | "spin_us" | "reactor"))
    }) {
        return Err(format!("unknown parameter {k:?}; {usage}"));
    }
    let wait = match p.get("wait") {
        Some(Value::String(w)) => w.as_str(),
        Some(_) => return Err(format!("\"wait\" must be a string; {usage}")),
        None => return Err(format!("missing \"wait\"; {usage}")),
    };
    let int = |k: &str| -> Result<Option<u64>, String> {
        match p.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("\"{k}\" must be a non-negative integer")),
        }
    };
    let spin = int("spin_us")?;
    let policy = crate::runtime::wait::parse(wait, spin, cfg.reactor.spin_us)?;
    let n = shared.rt.stats.len();
    let ids: Vec<usize> = match int("reactor")? {
        None => (0..n).collect(),
        Some(r) if r < n as u64 => vec![r as usize],
        Some(r) => {
            return Err(format!(
                "no reactor {r} (this daemon runs reactors 0 to {})",
                n.saturating_sub(1)
            ));
        }
    };
    if matches!(policy, crate::runtime::WaitPolicy::Poll)
        && let Some(&i) = ids.iter().find(|&&i| cfg.reactor.shares_core(i))
    {
        return Err(format!(
            "reactor {i} shares its core {} with the daemon's own threads (reactor.background_cores): a polling reactor would never leave it to them; use \"adaptive\" or \"interrupt\"",
            cfg.reactor.cores[i]
        ));
    }
    let before: Vec<_> = ids
        .iter()
        .map(|&i| shared.rt.stats[i].wait.current())
        .collect();
    for &i in &ids {
        shared.rt.stats[i].wait.request(policy);
        if let Some(m) = shared.rt.mailboxes.get(i) {
            m.send(crate::runtime::Msg::Nop);
        }
    }
    let t = std::time::Instant::now();
    while t.elapsed() < SET_WAIT_APPLY
        && ids
            .iter()
            .any(|&i| shared.rt.stats[i].wait.current() != Some(policy))
    {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    tracing::info!(wait, reactors = ?ids, "control: reactor wait policy set");
    Ok(json!({
        "reactors": ids.iter().zip(before).map(|(&i, b)| {
            let now = shared.rt.stats[i].wait.current();
            let (w0, s0) = wait_view(b);
            let (w1, s1) = wait_view(now);
            json!({
                "id": i,
                "core": cfg.reactor.cores.get(i),
                "previous_wait": w0,
                "previous_spin_us": s0,
                "wait": w1,
                "spin_us": s1,
                "applied": now == Some(policy),
            })
        }).collect::<Vec<_>>(),
    }))
}

/// A path state as `mirror_status` names it.
fn path_state_name(p: crate::bdev::volume::PathState) -> &'static str {
    use crate::bdev::volume::PathState::*;
    match p {
        Optimized => "optimized",
        NonOptimized => "non_optimized",
        Inaccessible => "inaccessible",
        Transitioning => "transitioning",
    }
}

/// What the witness last said about a volume's group, as this site's failover thread saw it,
/// and whether this site (`me`, its site id) claims the group as preferred.
fn witness_view(slot: &crate::layer::mirror::failover::FailoverSlot, me: u32) -> Value {
    use crate::layer::mirror::failover as f;
    let holder = slot.view_holder.load(Ordering::SeqCst);
    let preferred = slot.view_preferred.load(Ordering::SeqCst);
    let claims = slot.preferred_now() && slot.withdrawn.load(Ordering::SeqCst) == 0;
    json!({
        "preferred": (preferred != 0).then_some(preferred),
        "claims_preferred": claims,
        "claim_recorded": !claims || preferred == me,
        "reachable": match slot.witness.load(Ordering::SeqCst) {
            f::WITNESS_REACHABLE => json!(true),
            f::WITNESS_UNREACHABLE => json!(false),
            _ => Value::Null,
        },
        "epoch": slot.view_epoch.load(Ordering::SeqCst),
        "holder": (holder != 0).then_some(holder),
        "known_epoch": slot.known_epoch.load(Ordering::SeqCst),
        "last_answer": match slot.outcome.load(Ordering::SeqCst) {
            f::GRANTED => "granted",
            f::DENIED => "denied",
            f::UNREACHABLE if slot.tie.load(Ordering::SeqCst) => "tie",
            f::UNREACHABLE => "unreachable",
            _ => "none",
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn the_control_socket_is_0660_in_a_0750_directory_it_creates() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run/twinblk");
        let sock = dir.join("site.sock");
        // SAFETY: getegid has no preconditions.
        let gid = unsafe { libc::getegid() };
        let l = bind_socket(&sock, Some(gid)).unwrap();
        assert_eq!(mode(&dir), 0o750, "directory mode");
        assert_eq!(mode(&sock), 0o660, "socket mode");
        assert_eq!(std::fs::metadata(&sock).unwrap().gid(), gid);
        // A second daemon on the same path is refused while the first listens.
        let e = bind_socket(&sock, None).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
        drop(l);
        // A stale socket is replaced.
        bind_socket(&sock, None).unwrap();
        assert_eq!(mode(&sock), 0o660);
        assert_eq!(resolve_group(&gid.to_string()).unwrap(), gid);
        assert!(resolve_group("no-such-group-twinblk").is_err());
    }

    #[test]
    fn a_socket_or_directory_owned_by_another_user_is_refused() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to give a directory to another user");
            return;
        }
        let nobody = 65534;
        let tmp = tempfile::tempdir().unwrap();
        let theirs = tmp.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(nobody), Some(nobody)).unwrap();
        let e = bind_socket(&theirs.join("x.sock"), None).unwrap_err();
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");
        assert!(!theirs.join("x.sock").exists());
        // A file at the socket path owned by someone else, in a directory of ours.
        let sock = tmp.path().join("y.sock");
        std::fs::write(&sock, b"").unwrap();
        std::os::unix::fs::chown(&sock, Some(nobody), None).unwrap();
        let e = bind_socket(&sock, None).unwrap_err();
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");
        assert!(sock.exists(), "another user's file was removed");
    }
}
