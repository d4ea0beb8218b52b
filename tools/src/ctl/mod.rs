//! `twinblk-ctl`'s logic: a control-socket client, the cluster status (both sites, the
//! witness's state file read-only) and the verbs that wrap control methods.
//!
//! Model: every command is a few JSON-RPC calls (docs/control.md) to one control socket per
//! site; nothing is cached and nothing is written except by a verb the operator named. The
//! status is computed only from what the sites' data planes publish (`mirror_status`,
//! `daemon_info`) and, when given, the witness's own state file (read, never written: the
//! witness has no read-only query on the wire, and a heartbeat sent from here would count as a
//! site's liveness). A site that does not answer is reported as such, never guessed.
//!
//! Invariant: [`Status::in_sync`] is true only when every site answered and every mirrored
//! volume is `up` at both sites with nothing dirty, no resync running, no failure, no refused
//! session, one leader, and the witness (where configured) answering both sites. Exit codes are [`exit`].

pub mod admin;
pub mod cdp;
pub mod params;
pub mod render;
pub mod verify;

use serde::Serialize;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Exit codes (docs/control.md, "twinblk-ctl").
pub mod exit {
    /// Success; for `status`: everything in sync.
    pub const OK: i32 = 0;
    /// A daemon refused the request or answered something unexpected.
    pub const ERROR: i32 = 1;
    /// The command line is wrong (clap's own code).
    pub const USAGE: i32 = 2;
    /// `status`: every site answered, but something is not in sync (see the problems).
    pub const NOT_IN_SYNC: i32 = 3;
    /// A control socket could not be reached (for `status`: at least one site).
    pub const UNREACHABLE: i32 = 4;
    /// An unsafe verb was refused: it needs its confirmation flag.
    pub const REFUSED: i32 = 5;
    /// `takeover`: the witness did not grant the volume to this site (or no answer in time).
    pub const NOT_GRANTED: i32 = 6;
    /// `verify`: the replicas differ (regions differing in every re-check are listed).
    pub const REPLICAS_DIFFER: i32 = 7;
    /// `drill run`: the drill ran and its report is written, but a target was missed.
    pub const DRILL_FAILED: i32 = 8;
    /// `drill verify-history`/`verify-report`: a signature or the history's chain is broken.
    pub const NOT_AUTHENTIC: i32 = 9;
    /// `switchover`: it started but did not complete (rolled back, or no answer in time).
    pub const NOT_SWITCHED: i32 = 10;
    /// The daemon refused a run-time change because the object is in use (JSON-RPC
    /// `-32020`: exported, or hosts connected and no `--force`); nothing changed.
    pub const IN_USE: i32 = 11;
    /// The daemon refused a run-time change because the object comes from the config file,
    /// or a mirrored/CDP volume was asked for (JSON-RPC `-32022`); nothing changed.
    pub const CONFIGURED: i32 = 12;
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The socket could not be reached.
    #[error("cannot reach {path}: {source} ({hint})")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
        /// What it means, from what is at the path.
        hint: String,
    },
    /// The daemon's answer could not be read.
    #[error("{path}: reading the answer: {what}")]
    Reply {
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        what: String,
    },
    /// The daemon answered with a JSON-RPC error.
    #[error("the daemon refused {method}: {message} (code {code})")]
    Daemon {
        /// The method.
        method: String,
        /// JSON-RPC error code.
        code: i64,
        /// Its message.
        message: String,
    },
}

impl CallError {
    /// The socket at `path` could not be reached: `source`, explained by what is there.
    pub fn connect(path: &Path, source: std::io::Error) -> CallError {
        use std::io::ErrorKind as K;
        use std::os::unix::fs::FileTypeExt;
        let daemon = "is `twinblk serve` running, and is this the socket of its [control] section?";
        let hint = match source.kind() {
            K::NotFound => format!("no socket there: {daemon}"),
            K::PermissionDenied => "no permission: the socket is mode 0660 in a directory of mode 0750; run as the daemon's user or as a member of the daemon's [control] group".to_string(),
            K::ConnectionRefused => match std::fs::metadata(path) {
                Ok(m) if !m.file_type().is_socket() => {
                    "not a socket: give the [control] socket path of the daemon's config, not another file".to_string()
                }
                _ => format!(
                    "no daemon listens on it: a socket left by a daemon that stopped? {daemon}"
                ),
            },
            _ => daemon.to_string(),
        };
        CallError::Connect {
            path: path.to_path_buf(),
            source,
            hint,
        }
    }

    /// The exit code for this failure: unreachable, the run-time changes' refusals "in use"
    /// and "from the config file" (any command, also `call`), else [`exit::ERROR`].
    pub fn exit_code(&self) -> i32 {
        match self {
            CallError::Connect { .. } => exit::UNREACHABLE,
            CallError::Daemon { code: -32020, .. } => exit::IN_USE,
            CallError::Daemon { code: -32022, .. } => exit::CONFIGURED,
            _ => exit::ERROR,
        }
    }
}

/// One JSON-RPC call on the control socket at `path`; the `result`, or why not. It waits
/// [`answer_timeout`] for the answer.
pub fn call(path: &Path, method: &str, params: Value) -> Result<Value, CallError> {
    let t = answer_timeout(method, &params);
    call_timeout(path, method, params, t)
}

/// How long [`call`] waits for `method`'s answer: the longest the daemon may take to answer
/// it (docs/control.md), with room to spare. A client that gave up sooner would report a
/// failure while the daemon goes on and makes the change.
pub fn answer_timeout(method: &str, params: &Value) -> Duration {
    let secs = |k: &str, default: f64| {
        params
            .get(k)
            .and_then(Value::as_f64)
            .filter(|s| s.is_finite() && *s >= 0.0)
            .unwrap_or(default)
            .min(3600.0)
    };
    // A reactor step of a run-time change may take 15 s (REACTOR_WAIT), a creation two.
    let changes = 45.0;
    Duration::from_secs_f64(match method {
        // Waits up to "wait" s (default 120) for the catch-up, around the changes' steps.
        "cdp_enable" => secs("wait", 120.0) + 60.0,
        "cdp_disable" => 60.0,
        // 20 s to serve, then a child that did not is stopped (10 s grace).
        "cdp_view_open" => 45.0,
        // SIGINT, SIGKILL after 10 s.
        "cdp_view_close" => 25.0,
        "cdp_restore" => 20.0,
        // 60 s for the reactor's checksums.
        "volume_checksums" => 75.0,
        "mirror_switchover" => secs("wait_s", 10.0) + 10.0,
        "reactor_set_wait" => 15.0,
        "volume_create"
        | "volume_delete"
        | "nbd_export_add"
        | "nbd_export_remove"
        | "nvmf_subsystem_add"
        | "nvmf_subsystem_remove"
        | "nvmf_namespace_add"
        | "nvmf_namespace_remove"
        | "nvmf_host_allow"
        | "nvmf_host_disallow"
        | "iscsi_target_add"
        | "iscsi_target_remove"
        | "iscsi_lun_add"
        | "iscsi_lun_remove" => changes,
        _ => 10.0,
    })
}

/// Methods that change nothing (a call of one of them without an answer changed nothing).
const READINGS: &[&str] = &[
    "daemon_info",
    "volume_list",
    "export_list",
    "reactor_stats",
    "volume_stats",
    "mirror_status",
    "cdp_status",
    "cdp_bookmarks",
    "cdp_jobs",
    "host_list",
    "nvmf_subsystems",
    "volume_checksums",
];

/// As [`call`], waiting at most `timeout` for the answer.
pub fn call_timeout(
    path: &Path,
    method: &str,
    params: Value,
    timeout: Duration,
) -> Result<Value, CallError> {
    let mut s = UnixStream::connect(path).map_err(|source| CallError::connect(path, source))?;
    let reply_err = |what: String| CallError::Reply {
        path: path.to_path_buf(),
        what,
    };
    let _ = s.set_read_timeout(Some(timeout));
    let req = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    // A daemon with no room answers "busy" at once and closes, maybe before the request is
    // written (EPIPE): its answer is still there to read.
    let sent = writeln!(s, "{req}");
    let mut line = String::new();
    let read = BufReader::new(s).read_line(&mut line);
    // Without an answer the outcome of a change is unknown: say so, never just an OS error.
    let unknown = if READINGS.contains(&method) {
        String::new()
    } else {
        format!(
            "; whether {method} was done is not known: look (e.g. `status`, the lists) before asking again"
        )
    };
    match (sent, read) {
        (_, Ok(n)) if n > 0 => {}
        (Err(e), _) => return Err(reply_err(format!("{e}{unknown}"))),
        (Ok(()), Err(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return Err(reply_err(format!(
                "no answer within {} s (the daemon took the request but did not answer: busy with a long call, or stuck){unknown}",
                timeout.as_secs_f64()
            )));
        }
        (Ok(()), Err(e)) => return Err(reply_err(format!("{e}{unknown}"))),
        (Ok(()), Ok(_)) => {
            return Err(reply_err(format!(
                "the daemon closed the connection without answering (it stopped or crashed during the call?){unknown}"
            )));
        }
    }
    let reply: Value =
        serde_json::from_str(&line).map_err(|e| reply_err(format!("not JSON ({e}): {line:?}")))?;
    if let Some(e) = reply.get("error") {
        return Err(CallError::Daemon {
            method: method.to_string(),
            code: e["code"].as_i64().unwrap_or(0),
            message: e["message"].as_str().unwrap_or("").to_string(),
        });
    }
    Ok(reply.get("result").cloned().unwrap_or(Value::Null))
}

/// A site to ask: a label (from `NAME=PATH`, else the socket path) and its control socket.
#[derive(Clone, Debug, PartialEq)]
pub struct SiteArg {
    /// The label given on the command line, if any.
    pub label: Option<String>,
    /// The control socket.
    pub socket: PathBuf,
}

impl std::str::FromStr for SiteArg {
    type Err = String;
    /// `PATH` or `NAME=PATH`.
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("empty socket path".into());
        }
        Ok(match s.split_once('=') {
            Some((n, p)) if !n.is_empty() && !n.contains('/') && !p.is_empty() => SiteArg {
                label: Some(n.to_string()),
                socket: PathBuf::from(p),
            },
            _ => SiteArg {
                label: None,
                socket: PathBuf::from(s),
            },
        })
    }
}

/// What one site said.
#[derive(Serialize, Debug, Clone)]
pub struct SiteReport {
    /// The site's name (its `mirror.site`; else the label or socket given).
    pub name: String,
    /// Its control socket.
    pub socket: PathBuf,
    /// It answered.
    pub reachable: bool,
    /// Why not.
    pub error: Option<String>,
    /// Its site id at the witness (mirrored sites).
    pub site_id: Option<u64>,
    /// The witness address it is configured with.
    pub witness: Option<String>,
    /// Its version.
    pub version: Option<String>,
    /// Its volumes (`volume_list`).
    pub volumes: Vec<Value>,
    /// Its mirrored volumes (`mirror_status`).
    pub mirrors: Vec<Value>,
    /// Its CDP journals (`cdp_status`; empty from a daemon without the method).
    pub cdp: Vec<Value>,
}

/// The witness's record of a group, read from its state file.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct WitnessRecord {
    /// The group's epoch.
    pub epoch: u64,
    /// Holder site id (null: none).
    pub holder: Option<u32>,
    /// Preferred site id (null: unknown).
    pub preferred: Option<u32>,
}

/// One site's view of one volume.
#[derive(Serialize, Debug, Clone)]
pub struct VolumeAtSite {
    /// Site name.
    pub site: String,
    /// Its `mirror_status` entry (null: not mirrored there, or the site did not answer).
    pub mirror: Value,
    /// Its `cdp_status` entry (null: no journal there, or the site did not answer).
    pub cdp: Value,
}

/// One volume at both sites.
#[derive(Serialize, Debug, Clone)]
pub struct VolumeReport {
    /// Name.
    pub volume: String,
    /// Mirrored at some site.
    pub mirrored: bool,
    /// Size in bytes (from the first site that lists it).
    pub size: Option<u64>,
    /// Per site.
    pub sites: Vec<VolumeAtSite>,
    /// Everything about it is in sync.
    pub in_sync: bool,
    /// Why not.
    pub problems: Vec<String>,
}

/// A volume group.
#[derive(Serialize, Debug, Clone)]
pub struct GroupReport {
    /// Name (a volume's own name when it has no group).
    pub group: String,
    /// The witness's record from its state file (`--witness-state`), if read.
    pub witness_record: Option<WitnessRecord>,
    /// Its volumes.
    pub volumes: Vec<VolumeReport>,
}

/// The whole cluster.
#[derive(Serialize, Debug, Clone)]
pub struct Status {
    /// Everything is in sync (exit code 0).
    pub in_sync: bool,
    /// Every problem found, one line each.
    pub problems: Vec<String>,
    /// The sites asked.
    pub sites: Vec<SiteReport>,
    /// Volume groups (mirrored volumes), then a pseudo-group `(local)` of unmirrored volumes.
    pub groups: Vec<GroupReport>,
    /// The witness state file read, if any, or why it could not be read.
    pub witness_state: Option<Value>,
}

impl Status {
    /// The exit code of `status`.
    pub fn exit_code(&self) -> i32 {
        if self.sites.iter().any(|s| !s.reachable) {
            exit::UNREACHABLE
        } else if self.in_sync {
            exit::OK
        } else {
            exit::NOT_IN_SYNC
        }
    }
}

/// Ask one site for what the status needs.
pub fn site_report(arg: &SiteArg) -> SiteReport {
    let fallback = arg
        .label
        .clone()
        .unwrap_or_else(|| arg.socket.display().to_string());
    let mut r = SiteReport {
        name: fallback,
        socket: arg.socket.clone(),
        reachable: false,
        error: None,
        site_id: None,
        witness: None,
        version: None,
        volumes: Vec::new(),
        mirrors: Vec::new(),
        cdp: Vec::new(),
    };
    let answers = (|| -> Result<_, CallError> {
        Ok((
            call(&arg.socket, "daemon_info", Value::Null)?,
            call(&arg.socket, "volume_list", Value::Null)?,
            call(&arg.socket, "mirror_status", Value::Null)?,
            match call(&arg.socket, "cdp_status", Value::Null) {
                Err(CallError::Daemon { code: -32601, .. }) => Value::Null,
                r => r?,
            },
        ))
    })();
    match answers {
        Ok((info, vols, mirrors, cdp)) => {
            r.reachable = true;
            if let Some(site) = info["mirror"]["site"].as_str() {
                r.name = site.to_string();
            }
            r.site_id = info["mirror"]["site_id"].as_u64();
            r.witness = info["mirror"]["witness"].as_str().map(str::to_string);
            r.version = info["version"].as_str().map(str::to_string);
            r.volumes = vols.as_array().cloned().unwrap_or_default();
            r.mirrors = mirrors.as_array().cloned().unwrap_or_default();
            r.cdp = cdp.as_array().cloned().unwrap_or_default();
        }
        Err(e) => r.error = Some(e.to_string()),
    }
    r
}

/// Read the witness's state file (read-only) and return its group records by group id.
pub fn read_witness_state(
    path: &Path,
) -> Result<std::collections::BTreeMap<u64, WitnessRecord>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let t = twinblk_witness::state::Table::from_bytes(&bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(t.groups
        .iter()
        .map(|(g, r)| {
            (
                g.0,
                WitnessRecord {
                    epoch: r.epoch.0,
                    holder: r.holder.map(|h| h.get()),
                    preferred: r.preferred.map(|h| h.get()),
                },
            )
        })
        .collect())
}

/// Ask every site (and read the witness's state file, when given) and judge the result.
pub fn status(sites: &[SiteArg], witness_state: Option<&Path>) -> Status {
    let reports: Vec<SiteReport> = sites.iter().map(site_report).collect();
    let witness = witness_state.map(read_witness_state);
    assemble(reports, witness)
}

/// Judge the sites' reports (separate from the asking, so it can be tested on its own).
pub fn assemble(
    sites: Vec<SiteReport>,
    witness: Option<Result<std::collections::BTreeMap<u64, WitnessRecord>, String>>,
) -> Status {
    let mut problems = Vec::new();
    for s in &sites {
        if let Some(e) = &s.error {
            problems.push(format!("site {}: {e}", s.name));
        }
    }
    if let Some(Err(e)) = &witness {
        problems.push(format!("witness state file: {e}"));
    }
    let site_name = |id: u64| {
        sites
            .iter()
            .find(|s| s.site_id == Some(id))
            .map(|s| s.name.clone())
            .unwrap_or_else(|| format!("site id {id}"))
    };
    // Every volume any site lists, in the order first seen.
    let mut names: Vec<(String, bool, Option<u64>, String)> = Vec::new();
    for s in &sites {
        for v in &s.volumes {
            let Some(n) = v["name"].as_str() else {
                continue;
            };
            let m = s.mirrors.iter().find(|m| m["volume"] == n);
            let group = m
                .and_then(|m| m["group"].as_str())
                .unwrap_or("(local)")
                .to_string();
            match names.iter_mut().find(|x| x.0 == n) {
                Some(x) => {
                    if m.is_some() {
                        x.1 = true;
                        x.3 = group;
                    }
                }
                None => names.push((n.to_string(), m.is_some(), v["size"].as_u64(), group)),
            }
        }
    }
    let mut groups: Vec<GroupReport> = Vec::new();
    for (name, mirrored, size, group) in names {
        let per_site: Vec<VolumeAtSite> = sites
            .iter()
            .map(|s| VolumeAtSite {
                site: s.name.clone(),
                mirror: s
                    .mirrors
                    .iter()
                    .find(|m| m["volume"] == name.as_str())
                    .cloned()
                    .unwrap_or(Value::Null),
                cdp: s
                    .cdp
                    .iter()
                    .find(|c| c["volume"] == name.as_str())
                    .cloned()
                    .unwrap_or(Value::Null),
            })
            .collect();
        let mut vp = Vec::new();
        if mirrored {
            judge_mirror(&name, &sites, &per_site, &site_name, &mut vp);
        }
        judge_cdp(&name, &per_site, &mut vp);
        problems.extend(vp.iter().cloned());
        let v = VolumeReport {
            volume: name,
            mirrored,
            size,
            sites: per_site,
            in_sync: vp.is_empty(),
            problems: vp,
        };
        match groups.iter_mut().find(|g| g.group == group) {
            Some(g) => g.volumes.push(v),
            None => {
                let record = match (&witness, mirrored) {
                    (Some(Ok(t)), true) => Some(
                        t.get(&twinblk_witness::GroupId::from_name(&group).0)
                            .cloned()
                            .unwrap_or(WitnessRecord {
                                epoch: 0,
                                holder: None,
                                preferred: None,
                            }),
                    ),
                    _ => None,
                };
                if let Some(h) = record.as_ref().and_then(|r| r.holder) {
                    problems.push(format!(
                        "group {group}: the witness's state file names a survivor ({}): the group has not been released since a failover",
                        site_name(u64::from(h))
                    ));
                }
                groups.push(GroupReport {
                    group,
                    witness_record: record,
                    volumes: vec![v],
                });
            }
        }
    }
    // Local volumes last.
    groups.sort_by_key(|g| g.group == "(local)");
    let witness_state = witness.map(|w| match w {
        Ok(t) => json!({"groups": t.len()}),
        Err(e) => json!({"error": e}),
    });
    Status {
        in_sync: problems.is_empty(),
        problems,
        sites,
        groups,
        witness_state,
    }
}

/// The problems of one volume's CDP journals: one that stopped (`degraded`: its history
/// ends, the volume serves unprotected), one not whole yet (catching up after `cdp_enable`:
/// no point up to now can be restored or bookmarked), a rollback in place waiting for
/// `--confirm` or `--undo`. A journal switched off at run time is the operator's choice.
fn judge_cdp(name: &str, per_site: &[VolumeAtSite], out: &mut Vec<String>) {
    for v in per_site.iter().filter(|v| !v.cdp.is_null()) {
        let (c, at) = (&v.cdp, format!("{name} at {}", v.site));
        if c["journal"] == "degraded" {
            out.push(format!(
                "{at}: CDP journal DEGRADED (the history ends at sequence {}): {}",
                c["durable_seq"],
                c["degraded_note"]
                    .as_str()
                    .unwrap_or("see `twinblk-ctl cdp status`")
            ));
        }
        if c["catching_up"] == true {
            out.push(format!(
                "{at}: CDP history catching up (not whole yet: no point after the switch-on can be restored or bookmarked until it is)"
            ));
        }
        if let Some(r) = c["rollback"].as_str() {
            out.push(format!("{at}: CDP rollback in place not confirmed: {r}"));
        }
    }
}

/// The problems of one mirrored volume (`per_site` is in `sites` order).
fn judge_mirror(
    name: &str,
    sites: &[SiteReport],
    per_site: &[VolumeAtSite],
    site_name: &dyn Fn(u64) -> String,
    out: &mut Vec<String>,
) {
    let mut leaders = 0;
    for (s, v) in sites.iter().zip(per_site) {
        if !s.reachable {
            out.push(format!("{name} at {}: site not answering", s.name));
            continue;
        }
        let m = &v.mirror;
        if m.is_null() {
            out.push(format!("{name} at {}: not mirrored at this site", s.name));
            continue;
        }
        let at = format!("{name} at {}", s.name);
        if m["role"] == "leader" {
            leaders += 1;
        }
        let state = m["state"].as_str().unwrap_or("?");
        if state != "up" {
            let why = m["failure"]
                .as_str()
                .map(|f| format!(": {f}"))
                .unwrap_or_default();
            out.push(format!("{at}: state {state}{why}"));
        }
        if let Some(r) = m["session_refused"].as_str() {
            out.push(format!("{at}: the peer's session was refused: {r}"));
        }
        if let Some(d) = m["dirty_bytes"].as_u64().filter(|d| *d > 0) {
            out.push(format!("{at}: {d} dirty bytes to copy to the peer"));
        }
        if m["resync_running"] == true {
            if m["resync_paused"] == true {
                out.push(format!(
                    "{at}: resync PAUSED by an operator (its copies wait; only a last pass is never paused): `twinblk-ctl resync {name} resume`"
                ));
            } else {
                out.push(format!("{at}: resync running"));
            }
        }
        if m["takeover_pending"] == true {
            out.push(format!("{at}: a takeover waits for the witness"));
        }
        let w = &m["witness"];
        if !w.is_null() {
            if w["reachable"] == false {
                out.push(format!("{at}: the witness does not answer this site"));
            }
            if let Some(h) = w["holder"].as_u64() {
                out.push(format!(
                    "{at}: the witness says {} holds the survivor grant (epoch {})",
                    site_name(h),
                    w["epoch"]
                ));
            }
        }
    }
    if sites.len() == 2 && per_site.iter().all(|v| !v.mirror.is_null()) && leaders != 1 {
        out.push(format!(
            "{name}: {leaders} sites think they lead (the configurations disagree)"
        ));
    }
    if sites.len() < 2 {
        out.push(format!(
            "{name}: only one site was asked (give both sites' sockets)"
        ));
    }
}

/// `takeover`'s outcome.
#[derive(Serialize, Debug, Clone)]
pub struct TakeoverReport {
    /// The volume.
    pub volume: String,
    /// The witness answered before the deadline.
    pub answered: bool,
    /// The site now serves the volume alone (the witness granted it).
    pub granted: bool,
    /// The volume's state at this site afterwards.
    pub state: String,
    /// What the witness said (`granted`, `denied`, `unreachable`), as the site saw it.
    pub witness_answer: Value,
    /// The group's epoch and holder as the site saw them.
    pub witness: Value,
    /// Why the site asked nothing (`mirror_takeover` refused for the volume's state there:
    /// in session with its peer, a survivor, resyncing, failed); null when it asked.
    pub refused: Option<String>,
}

/// `mirror_takeover`'s error code for a volume whose state at the site is not one a takeover
/// is asked from (the daemon's `control::TAKEOVER_NOT_NOW`).
pub const TAKEOVER_NOT_NOW: i64 = -32012;

/// Ask the site at `socket` to take `volume` over (`mirror_takeover`) and wait up to `wait`
/// for the witness's answer.
pub fn takeover(socket: &Path, volume: &str, wait: Duration) -> Result<TakeoverReport, CallError> {
    let refused = match call(socket, "mirror_takeover", json!({"volume": volume})) {
        Ok(_) => None,
        Err(CallError::Daemon { code, message, .. }) if code == TAKEOVER_NOT_NOW => Some(message),
        Err(e) => return Err(e),
    };
    let t = std::time::Instant::now();
    loop {
        let st = call(socket, "mirror_status", Value::Null)?;
        let m = st
            .as_array()
            .and_then(|a| a.iter().find(|m| m["volume"] == volume))
            .cloned()
            .unwrap_or(Value::Null);
        let pending = m["takeover_pending"] == true;
        // The engine clears the request when the witness answers and becomes `survivor`
        // once the grant is taken (its state written first): a grant seen before the state
        // follows is awaited, not reported as not granted.
        let taking =
            !pending && m["witness"]["last_answer"] == "granted" && m["state"] != "survivor";
        if refused.is_some() || (!pending && !taking) || t.elapsed() >= wait {
            let state = m["state"].as_str().unwrap_or("?").to_string();
            return Ok(TakeoverReport {
                volume: volume.to_string(),
                answered: refused.is_some() || !pending,
                granted: refused.is_none() && !pending && state == "survivor",
                state,
                witness_answer: m["witness"]["last_answer"].clone(),
                witness: m["witness"].clone(),
                refused,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `switchover VOLUME|--group G --to SITE`: `mirror_switchover` on `socket`, waiting up to
/// `wait` (docs/control.md). The result, or the exit code and message of the failure: 3 the
/// pair is not in sync, 10 started and not completed, 1 refused (unknown volume, group or
/// site), 4 unreachable.
pub fn switchover(
    socket: &Path,
    target: (&str, &str),
    to: &str,
    wait: Duration,
) -> Result<Value, (i32, String)> {
    let params =
        json!({target.0: target.1, "to": to, "wait_s": wait.as_secs_f64().clamp(0.1, 600.0)});
    match call_timeout(
        socket,
        "mirror_switchover",
        params,
        wait + Duration::from_secs(10),
    ) {
        Ok(v) => Ok(v),
        Err(CallError::Daemon { code, message, .. }) => Err((
            match code {
                -32010 => exit::NOT_IN_SYNC,
                -32011 => exit::NOT_SWITCHED,
                _ => exit::ERROR,
            },
            message,
        )),
        Err(e) => Err((e.exit_code(), e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A control socket that answers one request with `result` after `delay`.
    fn slow_daemon(path: &Path, delay: Duration) -> std::thread::JoinHandle<()> {
        let l = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut line = String::new();
            BufReader::new(s.try_clone().unwrap())
                .read_line(&mut line)
                .unwrap();
            std::thread::sleep(delay);
            let _ = writeln!(
                &s,
                "{}",
                json!({"jsonrpc": "2.0", "id": 1, "result": {"ok": true}})
            );
        })
    }

    fn cdp_site(name: &str, journal: Value) -> SiteReport {
        SiteReport {
            name: name.into(),
            socket: PathBuf::from(format!("/tmp/{name}.sock")),
            reachable: true,
            error: None,
            site_id: None,
            witness: None,
            version: Some("0.1.0".into()),
            volumes: vec![json!({"name": "db", "size": 8 << 20, "block_size": 512})],
            mirrors: Vec::new(),
            cdp: vec![journal],
        }
    }

    #[test]
    fn a_paused_resync_is_shown_paused_not_as_a_rate_and_time_left() {
        let site = |name: &str, id: u64, m: Value| SiteReport {
            name: name.into(),
            socket: PathBuf::from(format!("/tmp/{name}.sock")),
            reachable: true,
            error: None,
            site_id: Some(id),
            witness: None,
            version: Some("0.1.0".into()),
            volumes: vec![json!({"name": "vol0", "size": 64u64 << 20, "block_size": 512})],
            mirrors: vec![m],
            cdp: Vec::new(),
        };
        let mirror = |role: &str, state: &str, extra: Value| {
            let mut m = json!({"volume": "vol0", "role": role, "state": state, "group": "vol0",
                "dirty_bytes": 0, "resync_running": false, "link_up": true, "session": 2,
                "witness": null});
            for (k, v) in extra.as_object().unwrap() {
                m[k] = v.clone();
            }
            m
        };
        let st = |extra: Value| {
            assemble(
                vec![
                    site("a", 1, mirror("leader", "survivor", extra)),
                    site("b", 2, mirror("follower", "resyncing", json!({}))),
                ],
                None,
            )
        };
        let paused = st(json!({"dirty_bytes": 32u64 << 20, "resync_running": true,
            "resync_paused": true, "resync_rate_bytes_per_s": 1u64 << 20, "resync_eta_s": 32.0}));
        assert!(
            paused
                .problems
                .iter()
                .any(|p| p.contains("vol0 at a: resync PAUSED")
                    && p.contains("twinblk-ctl resync vol0 resume")),
            "{:?}",
            paused.problems
        );
        let screen = render::status(&paused);
        assert!(screen.contains("PAUSED"), "{screen}");
        assert!(!screen.contains("s left"), "{screen}");
        let limited = st(json!({"dirty_bytes": 32u64 << 20, "resync_running": true,
            "resync_paused": false, "resync_rate_bytes_per_s": 1u64 << 20, "resync_eta_s": 32.0,
            "resync_rate_limit_bytes_per_s": 2u64 << 20}));
        let screen = render::status(&limited);
        assert!(
            screen.contains("1.0 MiB/s, 32.0 s left, limited to 2.0 MiB/s"),
            "{screen}"
        );
        assert!(
            limited
                .problems
                .iter()
                .any(|p| p == "vol0 at a: resync running"),
            "{:?}",
            limited.problems
        );
    }

    #[test]
    fn a_cdp_journal_that_stopped_or_is_not_whole_is_a_problem_of_the_status() {
        let journal = |j: &str, catching_up: bool, rollback: Value| {
            json!({"volume": "db", "journal": j, "catching_up": catching_up,
                "degraded_note": if j == "degraded" { json!("appending failed: No space left on device (os error 28); the next start journals the changed regions again") } else { Value::Null },
                "degraded_since_ns": if j == "degraded" { json!(5) } else { Value::Null },
                "durable_seq": 41, "rollback": rollback, "vouched": true})
        };
        let running = assemble(
            vec![cdp_site("a", journal("running", false, Value::Null))],
            None,
        );
        assert!(running.in_sync, "{:?}", running.problems);
        assert_eq!(running.exit_code(), exit::OK);
        // Switched off by an operator at run time: not a problem.
        let off = assemble(
            vec![cdp_site("a", journal("off", false, Value::Null))],
            None,
        );
        assert!(off.in_sync, "{:?}", off.problems);
        for (j, says) in [
            (
                journal("degraded", false, Value::Null),
                "db at a: CDP journal DEGRADED (the history ends at sequence 41): appending failed: No space left",
            ),
            (
                journal("running", true, Value::Null),
                "db at a: CDP history catching up",
            ),
            (
                journal(
                    "running",
                    false,
                    json!(
                        "rolled back to sequence 7 (time 9) at 10, not confirmed; --undo returns to sequence 40"
                    ),
                ),
                "db at a: CDP rollback in place not confirmed: rolled back to sequence 7",
            ),
        ] {
            let st = assemble(vec![cdp_site("a", j)], None);
            assert!(!st.in_sync, "{says}");
            assert_eq!(st.exit_code(), exit::NOT_IN_SYNC, "{says}");
            assert!(
                st.problems.iter().any(|p| p.starts_with(says)),
                "{says}: {:?}",
                st.problems
            );
            assert!(!st.groups[0].volumes[0].in_sync, "{says}");
        }
    }

    #[test]
    fn a_socket_that_cannot_be_reached_is_explained_by_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let msg = |p: &Path| call(p, "daemon_info", Value::Null).unwrap_err().to_string();
        // Nothing there.
        let m = msg(&dir.path().join("none.sock"));
        assert!(
            m.contains("no socket there: is `twinblk serve` running"),
            "{m}"
        );
        // A file that is not a socket (e.g. the config file given by mistake).
        let f = dir.path().join("twinblk.toml");
        std::fs::write(&f, "x").unwrap();
        let m = msg(&f);
        assert!(m.contains("not a socket"), "{m}");
        // A socket nobody listens on: a daemon that stopped without removing it.
        let stale = dir.path().join("stale.sock");
        drop(UnixListener::bind(&stale).unwrap());
        let m = msg(&stale);
        assert!(m.contains("no daemon listens on it"), "{m}");
        // No permission: the socket's mode and group (root passes any mode, so built).
        let e = CallError::connect(
            &stale,
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        assert!(
            e.to_string()
                .contains("a member of the daemon's [control] group"),
            "{e}"
        );
        assert_eq!(e.exit_code(), exit::UNREACHABLE);
    }

    #[test]
    fn a_call_without_an_answer_says_so_and_that_the_outcome_is_not_known() {
        let dir = tempfile::tempdir().unwrap();
        // The daemon takes the request and stops (or crashes) before it answers.
        let sock = dir.path().join("gone.sock");
        let l = UnixListener::bind(&sock).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
        });
        let e = call(&sock, "volume_create", json!({"name": "v"})).unwrap_err();
        t.join().unwrap();
        let m = e.to_string();
        assert!(
            m.contains("closed the connection without answering")
                && m.contains("whether volume_create was done is not known"),
            "{m}"
        );
        assert_eq!(e.exit_code(), exit::ERROR);
        // The daemon takes the request and does not answer in time.
        let sock = dir.path().join("mute.sock");
        let l = UnixListener::bind(&sock).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            std::thread::sleep(Duration::from_millis(800));
            drop(s);
        });
        let e = call_timeout(
            &sock,
            "nbd_export_add",
            json!({}),
            Duration::from_millis(200),
        )
        .unwrap_err();
        t.join().unwrap();
        let m = e.to_string();
        assert!(
            m.contains("no answer within 0.2 s")
                && m.contains("whether nbd_export_add was done is not known"),
            "{m}"
        );
    }

    #[test]
    fn a_call_waits_as_long_as_the_daemon_may_take_to_answer_that_method() {
        // cdp_enable answers once the catch-up is done or after "wait" seconds (default
        // 120): an answer after 11 s is a success, not "reading the answer: timed out"
        // while the daemon goes on and switches CDP on.
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("ctl.sock");
        let t = slow_daemon(&sock, Duration::from_secs(11));
        let r = call(&sock, "cdp_enable", json!({"volume": "v", "wait": 30}));
        t.join().unwrap();
        assert_eq!(r.unwrap(), json!({"ok": true}));
        // The waits the daemon documents, each with room for the answer.
        for (method, params, at_least) in [
            ("cdp_enable", json!({"volume": "v"}), 120),
            ("cdp_enable", json!({"volume": "v", "wait": 3600}), 3600),
            ("cdp_view_open", json!({}), 30),
            ("cdp_view_close", json!({"id": 1}), 10),
            ("volume_create", json!({}), 30),
            ("nbd_export_remove", json!({"force": true}), 15),
            ("volume_checksums", json!({}), 60),
            ("mirror_switchover", json!({"wait_s": 600}), 600),
        ] {
            let t = answer_timeout(method, &params);
            assert!(
                t > Duration::from_secs(at_least),
                "{method} {params}: {t:?}"
            );
        }
        assert_eq!(
            answer_timeout("daemon_info", &Value::Null),
            Duration::from_secs(10)
        );
    }
}
