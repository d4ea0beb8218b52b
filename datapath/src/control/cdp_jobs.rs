//! Point-in-time views and restores asked through the control socket (docs/control.md,
//! `cdp_view_open`, `cdp_view_close`, `cdp_restore`, `cdp_jobs`).
//!
//! Model: each is a child process of this daemon running the same binary's `twinblk cdp view`
//! or `twinblk cdp restore` (docs/cdp-format.md): a view's reads are synchronous, so it never
//! shares a reactor with production volumes, and a restore copies a whole volume, which no
//! reactor should do. [`CdpJobs`] keeps the children: their arguments, their log file (the
//! child's stdout and stderr), and their exit status once reaped.
//!
//! Invariants:
//! - Every child started is in the table until the daemon stops; its status is read with
//!   `try_wait`, never a blocking wait, except when closing a view (bounded).
//! - When the daemon stops ([`CdpJobs::stop_all`], also on drop) every running child is asked
//!   to stop (SIGINT: a view removes its consolidation hold, a restore stops and removes its
//!   temporary file, `out` never made) and reaped, or killed after a grace period.
//! - Nothing here touches the history or a live volume: the children only read the CDP
//!   directory (a sandbox view writes to RAM).

use crate::layer::cdp::CdpInfo;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a view may take to serve before `cdp_view_open` gives up (and stops it).
const OPEN_WAIT: Duration = Duration::from_secs(20);
/// How long a child may take to stop after SIGINT before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A view or a restore.
struct Job {
    id: u64,
    kind: &'static str,
    volume: String,
    child: Child,
    log: PathBuf,
    started: Instant,
    started_unix_ms: u64,
    /// What it was asked (the request's parameters).
    params: Value,
    /// Exit status once reaped.
    exit: Option<i32>,
}

impl Job {
    fn poll(&mut self) {
        if self.exit.is_none()
            && let Ok(Some(st)) = self.child.try_wait()
        {
            self.exit = Some(st.code().unwrap_or(-1));
        }
    }

    fn last_line(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| {
                let t = String::from_utf8_lossy(&b);
                // Progress lines end with \r; the last non-empty piece is the latest.
                t.split(['\n', '\r'])
                    .map(str::trim)
                    .rfind(|l| !l.is_empty())
                    .unwrap_or("")
                    .chars()
                    .take(400)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn describe(&mut self) -> Value {
        self.poll();
        json!({
            "id": self.id,
            "kind": self.kind,
            "volume": self.volume,
            "pid": self.child.id(),
            "state": match self.exit {
                None => "running".to_string(),
                Some(0) => "done".to_string(),
                Some(c) => format!("failed (exit {c})"),
            },
            "started_unix_ms": self.started_unix_ms,
            "elapsed_s": self.started.elapsed().as_secs_f64(),
            "params": self.params,
            "last_line": self.last_line(),
            "log": self.log.display().to_string(),
        })
    }

    /// SIGINT, wait up to `STOP_GRACE`, then SIGKILL.
    fn stop(&mut self) -> i32 {
        self.poll();
        if let Some(c) = self.exit {
            return c;
        }
        // SAFETY: signalling our own child process (not yet reaped, so its pid is still ours).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let t = Instant::now();
        while t.elapsed() < STOP_GRACE {
            self.poll();
            if let Some(c) = self.exit {
                return c;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let c = self.child.wait().ok().and_then(|s| s.code()).unwrap_or(-1);
        self.exit = Some(c);
        c
    }
}

/// The children started through the control socket.
pub struct CdpJobs {
    jobs: Mutex<Vec<Job>>,
    next: Mutex<u64>,
    /// Where their logs go.
    dir: PathBuf,
    /// The `twinblk` binary.
    exe: Option<PathBuf>,
    /// The daemon's reactors' cores (`[reactor] cores`, by reactor id) and whether they are
    /// pinned (`[reactor] pin`).
    cores: Vec<usize>,
    pin: bool,
    /// The CPUs the daemon's own threads run on (`runtime::Housekeeping`: `[reactor]
    /// background_cores`, else those no pinned reactor takes; empty when neither), where views
    /// run when there are any, one after the other.
    spare: Vec<usize>,
    /// Views placed so far (which spare CPU the next one takes).
    placed: std::sync::atomic::AtomicUsize,
    /// [`CdpJobs::stop_all`] ran (set under the jobs' lock): no child is started any more,
    /// since none would be stopped with the daemon.
    stopped: std::sync::atomic::AtomicBool,
}

impl Default for CdpJobs {
    fn default() -> Self {
        Self::new(vec![0], true, Vec::new())
    }
}

impl CdpJobs {
    /// No children yet; views are placed on `spare` (the CPUs of the daemon's own threads)
    /// when there are any, else on `cores` (the daemon's reactors' cores, by reactor id),
    /// pinned when `pin`. (Restores inherit the control thread's CPUs, which are the spare
    /// ones when there are any.)
    pub fn new(cores: Vec<usize>, pin: bool, spare: Vec<usize>) -> Self {
        Self {
            jobs: Mutex::new(Vec::new()),
            next: Mutex::new(1),
            dir: std::env::temp_dir().join(format!("twinblk-cdp-jobs-{}", std::process::id())),
            exe: std::env::current_exe().ok(),
            cores,
            pin,
            spare,
            placed: std::sync::atomic::AtomicUsize::new(0),
            stopped: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The view's placement arguments: the CPUs the daemon's own threads run on
    /// (`[reactor] background_cores`, else those no pinned reactor takes), in turn, when there
    /// are any (a view's reactor then runs where the operator put background work, by default
    /// never on a production reactor's core); else the core of reactor `home` (its volume's
    /// home reactor, an index into `[reactor] cores`, not a CPU number), and `--no-pin` when
    /// the daemon does not pin its reactors.
    fn placement(&self, home: usize) -> Vec<String> {
        let nth = self
            .placed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if !self.spare.is_empty() {
            let cpu = self.spare[nth % self.spare.len()];
            return vec!["--core".to_string(), cpu.to_string()];
        }
        let core = self
            .cores
            .get(home)
            .or(self.cores.first())
            .copied()
            .unwrap_or(0);
        let mut a = vec!["--core".to_string(), core.to_string()];
        if !self.pin {
            a.push("--no-pin".into());
        }
        a
    }
}

impl Drop for CdpJobs {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// The point a request names, as `twinblk cdp` arguments. Each value is joined to its option
/// (`--bookmark=-x`): a value of its own starting with '-' would be read as an option.
fn point_args(p: &Value) -> Result<Vec<String>, String> {
    // A key given with the wrong type is an error, never quietly left out (which would let
    // another key of the request name the point).
    let given = |k: &str| p.get(k).filter(|v| !v.is_null());
    let time = given("time_ns")
        .map(|v| {
            v.as_u64().ok_or(format!(
                "\"time_ns\" must be a non-negative integer, not {v}"
            ))
        })
        .transpose()?;
    let seq = given("seq")
        .map(|v| {
            v.as_u64()
                .ok_or(format!("\"seq\" must be a non-negative integer, not {v}"))
        })
        .transpose()?;
    let bookmark = given("bookmark")
        .map(|v| {
            v.as_str()
                .ok_or(format!("\"bookmark\" must be a string, not {v}"))
        })
        .transpose()?;
    match (time, seq, bookmark) {
        (Some(t), None, None) => Ok(vec![format!("--time={t}")]),
        (None, Some(s), None) => Ok(vec![format!("--seq={s}")]),
        (None, None, Some(b)) => Ok(vec![format!("--bookmark={b}")]),
        _ => Err("params need exactly one of \"time_ns\", \"seq\", \"bookmark\"".into()),
    }
}

/// A listen address parameter: absent or "" for none, else `host:port`.
fn addr_param(p: &Value, key: &str) -> Result<String, String> {
    match p.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) if s.is_empty() => Ok(String::new()),
        Some(Value::String(s)) => s
            .parse::<std::net::SocketAddr>()
            .map(|a| a.to_string())
            .map_err(|_| format!("\"{key}\" must be an address host:port, not {s:?}")),
        Some(v) => Err(format!("\"{key}\" must be a string, not {v}")),
    }
}

/// The address of the first `  SCHEME://ADDR/...` line of a serving daemon's banner.
fn served_at(banner: &str, scheme: &str) -> Option<String> {
    let prefix = format!("  {scheme}://");
    banner.lines().find_map(|l| {
        let rest = l.strip_prefix(&prefix)?;
        let addr = rest.split('/').next()?;
        addr.parse::<std::net::SocketAddr>()
            .ok()
            .map(|a| a.to_string())
    })
}

/// What a child that failed said: its `Error: ...` paragraph (with the causes, without a
/// backtrace), else its last non-empty line.
fn failure_of(text: &str) -> String {
    let tail = match text.find("Error:") {
        Some(i) => &text[i..],
        None => text.lines().rfind(|l| !l.trim().is_empty()).unwrap_or(""),
    };
    let tail = tail.split("Stack backtrace:").next().unwrap_or("");
    tail.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(600)
        .collect()
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl CdpJobs {
    fn start(
        &self,
        kind: &'static str,
        volume: &str,
        args: &[String],
        params: &Value,
    ) -> Result<u64, String> {
        let exe = self
            .exe
            .as_ref()
            .ok_or("cannot find this daemon's own executable to start the child")?;
        crate::control::config::private_dir(&self.dir, "the children's logs")?;
        let id = {
            let mut n = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let id = *n;
            *n += 1;
            id
        };
        let log = self.dir.join(format!("{kind}-{id}.log"));
        // Made anew (an earlier daemon's of the same pid, or anything else, is removed:
        // removing never follows a link), never opened through a link.
        let _ = std::fs::remove_file(&log);
        let out = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&log)
                .map_err(|e| format!("cannot create {}: {e}", log.display()))?
        };
        let err = out
            .try_clone()
            .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
        // Checked, started and listed under the lock `stop_all` takes: a child is either
        // listed before it runs (and stopped with the daemon) or never started.
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(format!(
                "the daemon is stopping: no {kind} is started any more"
            ));
        }
        let child = Command::new(exe)
            .args(args)
            // It stops once this daemon is gone, also killed (a clean stop stops it first).
            .arg(format!("--parent={}", std::process::id()))
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        tracing::info!(
            id,
            kind,
            volume,
            pid = child.id(),
            "cdp: started through the control socket"
        );
        jobs.push(Job {
            id,
            kind,
            volume: volume.to_string(),
            child,
            log,
            started: Instant::now(),
            started_unix_ms: unix_ms(),
            params: params.clone(),
            exit: None,
        });
        Ok(id)
    }

    fn with_job<T>(&self, id: u64, f: impl FnOnce(&mut Job) -> T) -> Result<T, String> {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let j = jobs
            .iter_mut()
            .find(|j| j.id == id)
            .ok_or_else(|| format!("no view or restore with id {id}"))?;
        Ok(f(j))
    }

    /// `cdp_view_open`: start a view of the histories of `members` (each with its volume's
    /// name; several: a group, at one time) in one child process and wait until it serves.
    /// `label` names what is viewed in `cdp_jobs` (the volume, or "group G").
    pub fn view_open(
        &self,
        members: &[(&CdpInfo, String)],
        label: &str,
        p: &Value,
    ) -> Result<Value, String> {
        let group = p.get("group").is_some();
        if group && p.get("seq").is_some() {
            return Err("\"seq\" names a point of one volume: view a group at one \"time_ns\" or \"bookmark\"".into());
        }
        if group && p.get("name").is_some() {
            return Err(
                "a group's view serves each volume under its own name: give no \"name\"".into(),
            );
        }
        let mut args: Vec<String> = vec!["cdp".into(), "view".into()];
        args.extend(point_args(p)?);
        // Of the wrong type it is refused, never left out for the default.
        let name = match p.get("name") {
            None | Some(Value::Null) => "view",
            Some(Value::String(n)) => n.as_str(),
            Some(v) => return Err(format!("\"name\" must be a string, not {v}")),
        };
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
        {
            return Err(format!(
                "\"name\" must be 1 to 64 letters, digits, '-', '_' or '.', not {name:?}"
            ));
        }
        let names: Vec<String> = if group {
            members.iter().map(|(_, v)| v.clone()).collect()
        } else {
            vec![name.to_string()]
        };
        // Values joined to their options: a name may start with '-'.
        for ((c, _), n) in members.iter().zip(&names) {
            args.push(format!("--dir={}", c.dir.display()));
            args.push(format!("--name={n}"));
        }
        let (nbd, nvmf, iscsi) = (
            addr_param(p, "nbd")?,
            addr_param(p, "nvmf")?,
            addr_param(p, "iscsi")?,
        );
        if nbd.is_empty() && nvmf.is_empty() && iscsi.is_empty() {
            return Err(
                "params need at least one listen address: \"nbd\", \"nvmf\" or \"iscsi\"".into(),
            );
        }
        match p.get("sandbox") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => {}
            Some(Value::Bool(true)) => args.push("--sandbox".into()),
            Some(v) => return Err(format!("\"sandbox\" must be true or false, not {v}")),
        }
        args.extend([
            format!("--nbd={nbd}"),
            format!("--nvmf={nvmf}"),
            format!("--iscsi={iscsi}"),
        ]);
        let home = members.first().map_or(0, |(c, _)| c.home);
        args.extend(self.placement(home));
        let t = Instant::now();
        let id = self.start("view", label, &args, p)?;
        // Serving once it prints its banner's last line; failed if it exits first.
        let (nbd, nvmf, iscsi) = loop {
            let (exit, text) = self.with_job(id, |j| {
                j.poll();
                (j.exit, std::fs::read_to_string(&j.log).unwrap_or_default())
            })?;
            if text.contains("Ctrl-C") {
                // The addresses it listens on, as its banner names them: a port 0 asked
                // for is the port the system gave.
                let bound = |given: String, scheme: &str| {
                    if given.is_empty() {
                        given
                    } else {
                        served_at(&text, scheme).unwrap_or(given)
                    }
                };
                break (
                    bound(nbd, "nbd"),
                    bound(nvmf, "nvme+tcp"),
                    bound(iscsi, "iscsi"),
                );
            }
            if let Some(code) = exit {
                let why = failure_of(&text);
                self.forget(id);
                return Err(format!("the view did not start (exit {code}): {why}"));
            }
            if t.elapsed() > OPEN_WAIT {
                let _ = self.with_job(id, Job::stop);
                self.forget(id);
                return Err(format!(
                    "the view did not serve within {} s; stopped",
                    OPEN_WAIT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let pid = self.with_job(id, |j| j.child.id())?;
        let endpoints = |n: &str| {
            json!({
                "nbd": (!nbd.is_empty()).then(|| format!("nbd://{nbd}/{n}")),
                "nvmf": (!nvmf.is_empty()).then(|| json!({"addr": nvmf, "nqn": format!("nqn.2026-11.io.twinblk:{n}")})),
                "iscsi": (!iscsi.is_empty()).then(|| json!({"addr": iscsi, "iqn": format!("iqn.2026-11.io.twinblk:{n}")})),
            })
        };
        let mut r = json!({
            "id": id,
            "pid": pid,
            "volume": label,
            "opened_s": t.elapsed().as_secs_f64(),
        });
        if group {
            r["group"] = p["group"].clone();
            r["time_ns"] = p.get("time_ns").cloned().unwrap_or(Value::Null);
            r["volumes"] = members
                .iter()
                .map(|(_, v)| {
                    let mut e = endpoints(v);
                    e["volume"] = json!(v);
                    e["name"] = json!(v);
                    e
                })
                .collect();
        } else {
            r["name"] = json!(name);
            let e = endpoints(name);
            for k in ["nbd", "nvmf", "iscsi"] {
                r[k] = e[k].clone();
            }
        }
        Ok(r)
    }

    /// `cdp_restore`: start a restore of `c`'s history to the new file `out`, which must be
    /// in an existing directory outside every history directory of `histories` and none of
    /// the daemon's state files `state_files`.
    pub fn restore(
        &self,
        c: &CdpInfo,
        volume: &str,
        p: &Value,
        histories: &[PathBuf],
        state_files: &[PathBuf],
    ) -> Result<Value, String> {
        let out = p
            .get("out")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or("params need \"out\": the new file to restore into")?;
        let out = Path::new(out);
        if !out.is_absolute() {
            return Err(
                "\"out\" must be an absolute path (the daemon's working directory is not yours)"
                    .into(),
            );
        }
        let dirs: Vec<&Path> = std::iter::once(c.dir.as_path())
            .chain(histories.iter().map(PathBuf::as_path))
            .collect();
        crate::layer::cdp::pit::check_out(out, &dirs).map_err(|e| e.to_string())?;
        crate::control::config::check_not_a_state_file(out, state_files)?;
        if out.exists() {
            return Err(format!(
                "{} exists: a restore only writes a new file",
                out.display()
            ));
        }
        // Checked now, not only by the child: the answer comes at once.
        out.parent()
            .and_then(|d| std::fs::canonicalize(d).ok())
            .filter(|d| d.is_dir())
            .ok_or_else(|| {
                format!(
                    "the directory of {} does not exist or is not a directory",
                    out.display()
                )
            })?;
        let mut args: Vec<String> = vec![
            "cdp".into(),
            "restore".into(),
            format!("--dir={}", c.dir.display()),
            format!("--out={}", out.display()),
        ];
        args.extend(point_args(p)?);
        let id = self.start("restore", volume, &args, p)?;
        let pid = self.with_job(id, |j| j.child.id())?;
        Ok(json!({"id": id, "pid": pid, "volume": volume, "out": out.display().to_string()}))
    }

    /// `cdp_view_close`: stop view or restore `id` (SIGINT, then SIGKILL after a grace).
    pub fn close(&self, id: u64) -> Result<Value, String> {
        let exit = self.with_job(id, Job::stop)?;
        Ok(json!({"id": id, "exit": exit}))
    }

    /// `cdp_jobs`: every view and restore started, oldest first.
    pub fn list(&self) -> Value {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        Value::Array(jobs.iter_mut().map(Job::describe).collect())
    }

    fn forget(&self, id: u64) {
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|j| j.id != id);
    }

    /// Stop every child still running (the daemon stops).
    pub fn stop_all(&self) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for j in jobs.iter_mut() {
            if j.exit.is_none() {
                let code = j.stop();
                tracing::info!(
                    id = j.id,
                    kind = j.kind,
                    code,
                    "cdp: stopped with the daemon"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a spare CPU a view runs on its volume's home reactor's core: `[reactor] cores`
    /// maps the reactor id to the CPU (a daemon on cores 3 and 5 once pinned a view of reactor
    /// 1's volume to CPU 1). With spare CPUs, views take them in turn.
    #[test]
    fn a_view_is_placed_on_a_spare_cpu_or_its_home_reactors_core_not_on_the_reactors_index() {
        let j = CdpJobs::new(vec![3, 5], true, Vec::new());
        assert_eq!(j.placement(1), ["--core", "5"]);
        assert_eq!(j.placement(0), ["--core", "3"]);
        // An id past the list (never given by the daemon): the first core, not a CPU number.
        assert_eq!(j.placement(7), ["--core", "3"]);
        let unpinned = CdpJobs::new(vec![2], false, Vec::new());
        assert_eq!(unpinned.placement(0), ["--core", "2", "--no-pin"]);
        // Unpinned reactors with `background_cores`: views go there, pinned.
        let unpinned = CdpJobs::new(vec![2], false, vec![2]);
        assert_eq!(unpinned.placement(0), ["--core", "2"]);
        let spare = CdpJobs::new(vec![3, 5], true, vec![0, 1, 4]);
        let got: Vec<_> = (0..4).map(|i| spare.placement(i % 2)[1].clone()).collect();
        assert_eq!(got, ["0", "1", "4", "0"]);
    }

    #[test]
    fn points_and_addresses_are_checked_before_anything_starts() {
        assert_eq!(point_args(&json!({"seq": 5})).unwrap(), ["--seq=5"]);
        assert_eq!(
            point_args(&json!({"bookmark": "b"})).unwrap(),
            ["--bookmark=b"]
        );
        // A bookmark starting with '-' stays the option's value.
        assert_eq!(
            point_args(&json!({"bookmark": "--sandbox"})).unwrap(),
            ["--bookmark=--sandbox"]
        );
        assert!(point_args(&json!({})).is_err());
        assert!(point_args(&json!({"seq": 5, "time_ns": 1})).is_err());
        assert!(point_args(&json!({"seq": "5"})).is_err());
        // A key of the wrong type beside a good one is refused, not left out.
        let e = point_args(&json!({"seq": 5, "time_ns": "1"})).unwrap_err();
        assert!(e.contains("time_ns"), "{e}");
        let e = point_args(&json!({"bookmark": "b", "seq": -1})).unwrap_err();
        assert!(e.contains("seq"), "{e}");
        assert_eq!(
            point_args(&json!({"seq": 5, "time_ns": null})).unwrap(),
            ["--seq=5"]
        );
        assert_eq!(addr_param(&json!({}), "nbd").unwrap(), "");
        assert_eq!(
            addr_param(&json!({"nbd": "127.0.0.1:9"}), "nbd").unwrap(),
            "127.0.0.1:9"
        );
        assert!(addr_param(&json!({"nbd": "nowhere"}), "nbd").is_err());
        assert!(addr_param(&json!({"nbd": 9}), "nbd").is_err());
    }

    /// The logs' directory has a name anyone can guess (`/tmp/twinblk-cdp-jobs-PID`): one
    /// made there by another user, or a symbolic link, would have the daemon create (or
    /// truncate, through a link planted in it) files where that user chose. Only a private
    /// directory of this user is written.
    #[test]
    fn the_logs_go_only_to_a_private_directory_of_this_user() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let exe = Some(PathBuf::from("/bin/true"));
        // A symbolic link in its place.
        let mut j = CdpJobs::default();
        j.exe = exe.clone();
        j.dir = tmp.path().join("link");
        std::os::unix::fs::symlink(&elsewhere, &j.dir).unwrap();
        let e = j.start("restore", "v", &[], &json!({})).unwrap_err();
        assert!(e.contains("refusing"), "{e}");
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
        // A directory others may write in.
        let mut j = CdpJobs::default();
        j.exe = exe.clone();
        j.dir = tmp.path().join("open");
        std::fs::create_dir(&j.dir).unwrap();
        std::fs::set_permissions(&j.dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = j.start("restore", "v", &[], &json!({})).unwrap_err();
        assert!(e.contains("refusing"), "{e}");
        assert_eq!(std::fs::read_dir(&j.dir).unwrap().count(), 0);
        // Made here: private, and used.
        let mut j = CdpJobs::default();
        j.exe = exe;
        j.dir = tmp.path().join("new");
        j.start("restore", "v", &[], &json!({})).unwrap();
        let mode = std::fs::metadata(&j.dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(j.dir.join("restore-1.log").exists());
        j.stop_all();
    }

    /// Once the daemon stopped its children, none is started (it would outlive the daemon).
    #[test]
    fn no_child_is_started_after_stop_all() {
        let j = CdpJobs::default();
        j.stop_all();
        let e = j
            .start("restore", "v", &["--version".to_string()], &json!({}))
            .unwrap_err();
        assert!(e.contains("stopping"), "{e}");
        assert_eq!(j.list(), json!([]));
    }

    #[test]
    fn the_addresses_a_view_serves_on_are_read_from_its_banner() {
        let b = "twinblk 0.1.0 serving 1 volume(s)\n  nvme+tcp://127.0.0.1:4421/nqn.x:v\n    nvme connect -t tcp\n  iscsi://[::1]:3261/iqn.x:v/0\n    iscsi-inq iscsi://127.0.0.1:9/x/0\n  nbd://127.0.0.1:35521/v\n    nbdinfo nbd://127.0.0.1:1/v\n";
        assert_eq!(served_at(b, "nbd").as_deref(), Some("127.0.0.1:35521"));
        assert_eq!(served_at(b, "nvme+tcp").as_deref(), Some("127.0.0.1:4421"));
        assert_eq!(served_at(b, "iscsi").as_deref(), Some("[::1]:3261"));
        assert_eq!(served_at("  nbd://nowhere/v\n", "nbd"), None);
    }

    /// The logs' directory is a fixed name under the shared temporary directory: one made
    /// there by another user (or open to others) with a link at a log's name made the daemon
    /// (root) truncate and write the link's target. Such a directory is refused, and a log is
    /// created anew, never through a link.
    #[test]
    fn a_log_is_never_written_through_a_link_or_into_a_directory_open_to_others() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let mut j = CdpJobs::new(vec![0], false, Vec::new());
        j.exe = Some(PathBuf::from("/bin/true"));
        j.dir = d.path().join("jobs");
        std::fs::create_dir(&j.dir).unwrap();
        std::os::unix::fs::symlink(&victim, j.dir.join("restore-1.log")).unwrap();
        // Open to others: refused, nothing written.
        std::fs::set_permissions(&j.dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let r = j.start("restore", "v", &[], &json!({}));
        std::thread::sleep(std::time::Duration::from_millis(200));
        let now = std::fs::read_to_string(&victim).unwrap();
        assert!(r.is_err(), "{r:?}: the link's target now holds {now:?}");
        assert!(r.unwrap_err().contains("refusing"));
        assert_eq!(now, "precious");
        // Closed to others, with a link left at a log's name: the log replaces the link.
        std::fs::set_permissions(&j.dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let id = j.start("restore", "v", &[], &json!({})).unwrap();
        let log = j.dir.join(format!("restore-{id}.log"));
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(
            !std::fs::symlink_metadata(&log)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        // The directory itself a link: refused.
        let real = d.path().join("real");
        std::fs::create_dir(&real).unwrap();
        j.dir = d.path().join("linked");
        std::os::unix::fs::symlink(&real, &j.dir).unwrap();
        let e = j.start("restore", "v", &[], &json!({})).unwrap_err();
        assert!(e.contains("refusing"), "{e}");
    }

    #[test]
    fn a_childs_failure_is_its_error_paragraph() {
        let t = "cdp view of /j\nError: reading /j\n\nCaused by:\n    sequence 9 is outside\n\nStack backtrace:\n  0: x\n 21: _start\n";
        assert_eq!(
            failure_of(t),
            "Error: reading /j Caused by: sequence 9 is outside"
        );
        assert_eq!(failure_of("one\nlast line\n\n"), "last line");
        assert_eq!(failure_of(""), "");
    }
}
