//! `twinblk-ctl drill`: the disaster-recovery drill (docs/drill.md).
//!
//! Model: against a running two-site cluster, with a steady write load from both sites
//! ([`load`]), the drill fails one site (kills it, or cuts its links or the inter-site link
//! through twinlink), measures the recovery, brings the site back, measures the resync,
//! checks that no acknowledged write was lost and that the replicas are identical, and
//! writes a signed report (JSON and HTML) and a signed, chained history line ([`sign`]).
//!
//! Phases, in order: precheck (both sites answer, the volume is `up` and in sync at both:
//! a drill never starts on a degraded cluster) → baseline load → fault → failover (until the
//! survivor acknowledges a write issued after the fault) → read-back at the survivor (load
//! paused) → observation → restore → resync (until both sites are `up`, nothing dirty, no
//! resync) → read-back at both sites (load paused) → load back home → read-back at both
//! sites → replica comparison (`twinblk-ctl verify`'s code) → report. Each read-back runs
//! before the load can overwrite the writes it judges (load.rs, "Regions"). Timestamps are microseconds since the drill's start on one monotonic clock: the
//! writers' send and acknowledge times, and `mirror_status` polls of each site (one thread
//! per site, every `timing.poll_ms`), so a phase is known to within one poll interval.
//!
//! Invariants: RPO is reported "0 (verified)" only when every block holding an acknowledged
//! write was read back at the survivor after the fault and at both sites after the resync and
//! at the end, and none held less than its newest acknowledged write; anything short of that is "not
//! verified" and fails the target. A measurement that could not be taken (no failover, no
//! resync) fails its target; it is never replaced by a guess. Every loop is bounded by a
//! configured time. The drill only writes to its own block range of the volume.

pub mod config;
pub mod html;
pub mod load;
pub mod nbd;
pub mod sandbox;
pub mod sign;

use crate::ctl::{self, CallError, exit};
use config::{ConfigError, DrillConfig, FaultConfig, FaultKind, Targets};
use load::{LoadControl, Readback, WriteRec, Writer, WriterSpec};
use serde::Serialize;
use serde_json::{Value, json};
use sign::{Key, SignError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// The report's schema name (docs/drill.md).
pub const SCHEMA: &str = "twinblk-drill/1";
/// The latency is "back to normal" when the rolling median is within this factor of the
/// baseline's median.
pub const NORMAL_LATENCY_FACTOR: f64 = 1.5;
/// Writes in the rolling window for "back to normal".
const ROLLING_WRITES: usize = 16;
/// A `mirror_status` poll gives up after this long (a site that does not answer is recorded
/// as unreachable, and the poll of the other site goes on in its own thread).
const POLL_TIMEOUT: Duration = Duration::from_secs(1);
/// Most points in the latency series (wider buckets for longer drills).
const MAX_SERIES_POINTS: u64 = 600;
/// What no drill covers yet (in every report).
const NOT_COVERED: &str = "a view of a group's volumes at one time (one view per volume), views opened through the production daemon's control socket, and a view process on another host than the drill's";
/// Lost writes listed one by one in the report (all are counted).
const MAX_LOST_LISTED: usize = 100;

/// Why the drill could not run (a drill that ran and missed a target is not an error: see
/// [`Outcome::pass`]).
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// The config is unusable (exit 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The key, the report or the history could not be used (exit 1).
    #[error(transparent)]
    Sign(#[from] SignError),
    /// A site could not be asked (exit 4 when unreachable).
    #[error(transparent)]
    Call(#[from] CallError),
    /// The cluster is not in a state to drill (exit 3).
    #[error("{0}")]
    NotReady(String),
    /// Something else stopped the drill (exit 1).
    #[error("{0}")]
    Failed(String),
}

impl DrillError {
    /// The exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            DrillError::Config(_) => exit::USAGE,
            DrillError::Call(e) => e.exit_code(),
            DrillError::NotReady(_) => exit::NOT_IN_SYNC,
            DrillError::Sign(_) | DrillError::Failed(_) => exit::ERROR,
        }
    }
}

/// A finished drill.
pub struct Outcome {
    /// The signed report.
    pub report: Value,
    /// Every target was met.
    pub pass: bool,
    /// Where the JSON report was written.
    pub json_path: PathBuf,
    /// Where the HTML report was written.
    pub html_path: PathBuf,
}

/// One poll of one site.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sample {
    /// µs since the drill's start.
    pub t_us: u64,
    /// Site index.
    pub site: usize,
    /// It answered and lists the volume.
    pub reachable: bool,
    /// `mirror_status` state (`unreachable` when not answering).
    pub state: String,
    /// Path state.
    pub path_state: String,
    /// A session with the peer is up.
    pub link_up: bool,
    /// Dirty bytes.
    pub dirty_bytes: u64,
    /// A resync runs.
    pub resync_running: bool,
    /// Bytes copied by resyncs (counter).
    pub resync_bytes: u64,
    /// Survivor-grant holder (site id) as this site last heard.
    pub holder: Option<u64>,
    /// The group's epoch as this site last heard.
    pub epoch: Option<u64>,
    /// The witness's last answer to this site's grant request.
    pub last_answer: Option<String>,
}

impl Sample {
    fn from_status(t_us: u64, site: usize, m: Option<&Value>) -> Sample {
        let Some(m) = m else {
            return Sample {
                t_us,
                site,
                reachable: false,
                state: "unreachable".into(),
                path_state: "unknown".into(),
                link_up: false,
                dirty_bytes: 0,
                resync_running: false,
                resync_bytes: 0,
                holder: None,
                epoch: None,
                last_answer: None,
            };
        };
        let s = |v: &Value| v.as_str().unwrap_or("?").to_string();
        Sample {
            t_us,
            site,
            reachable: true,
            state: s(&m["state"]),
            path_state: s(&m["path_state"]),
            link_up: m["link_up"] == true,
            dirty_bytes: m["dirty_bytes"].as_u64().unwrap_or(0),
            resync_running: m["resync_running"] == true,
            resync_bytes: m["resync_bytes"].as_u64().unwrap_or(0),
            holder: m["witness"]["holder"].as_u64(),
            epoch: m["witness"]["epoch"].as_u64(),
            last_answer: m["witness"]["last_answer"].as_str().map(str::to_string),
        }
    }

    /// Up, mirrored, nothing to copy.
    fn in_sync(&self) -> bool {
        self.reachable
            && self.state == "up"
            && self.link_up
            && self.dirty_bytes == 0
            && !self.resync_running
    }
}

fn us(t0: Instant) -> u64 {
    u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX)
}

fn secs(us: u64) -> f64 {
    us as f64 / 1e6
}

/// The volume's entry of a `mirror_status` answer.
fn mirror_entry(status: &Value, volume: &str) -> Option<Value> {
    status
        .as_array()?
        .iter()
        .find(|m| m["volume"] == volume)
        .cloned()
}

/// Poll each site's `mirror_status` until stopped.
struct Pollers {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Pollers {
    fn start(cfg: &DrillConfig, t0: Instant) -> Result<Pollers, DrillError> {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let period = Duration::from_millis(cfg.timing.poll_ms);
        for (i, s) in cfg.sites.iter().enumerate() {
            let (socket, volume) = (s.socket.clone(), cfg.volume.clone());
            let (samples, stop) = (Arc::clone(&samples), Arc::clone(&stop));
            let t = std::thread::Builder::new()
                .name(format!("drill-poll-{i}"))
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let started = Instant::now();
                        let t = us(t0);
                        let m =
                            ctl::call_timeout(&socket, "mirror_status", Value::Null, POLL_TIMEOUT)
                                .ok()
                                .and_then(|st| mirror_entry(&st, &volume));
                        let s = Sample::from_status(t, i, m.as_ref());
                        samples.lock().unwrap_or_else(|p| p.into_inner()).push(s);
                        if let Some(rest) = period.checked_sub(started.elapsed()) {
                            std::thread::sleep(rest);
                        }
                    }
                })
                .map_err(|e| DrillError::Failed(format!("starting a poller: {e}")))?;
            threads.push(t);
        }
        Ok(Pollers {
            samples,
            stop,
            threads,
        })
    }

    fn snapshot(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Pollers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Run `cmd` with `sh -c`, its output appended to `log`; Ok when it exits 0 within `timeout`.
fn run_command(
    cmd: &str,
    log: &Path,
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<(), String> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("sh -c {cmd:?}: {e}"))?;
    let t = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => {
                return Err(format!(
                    "{cmd:?} failed ({st}); its output is in {}",
                    log.display()
                ));
            }
            Ok(None) if t.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{cmd:?} did not finish within {timeout:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("{cmd:?}: {e}")),
        }
    }
}

/// Cut (`cut = true`) or restore each configured twinlink link, both directions.
fn twinlink(f: &FaultConfig, cut: bool) -> Result<(), String> {
    let Some(ctl_path) = &f.twinlink_control else {
        return Err("no twinlink_control".into());
    };
    for l in &f.links {
        let req = json!({"cmd": if cut { "cut" } else { "restore" }, "link": l});
        let a = crate::twinlink::control::request(ctl_path, &req)
            .map_err(|e| format!("twinlink {}: {e}", ctl_path.display()))?;
        if a["ok"] != true {
            return Err(format!("twinlink refused {req}: {}", a["error"]));
        }
    }
    Ok(())
}

/// Inject (`restore = false`) or undo the configured fault.
fn fault(f: &FaultConfig, restore: bool, log: &Path) -> Result<(), String> {
    let timeout = Duration::from_secs_f64(f.command_timeout_s);
    match f.kind {
        FaultKind::Kill => {
            let cmd = if restore {
                &f.restart_command
            } else {
                &f.kill_command
            };
            let phase = if restore { "restore" } else { "inject" };
            run_command(
                cmd.as_deref().unwrap_or(""),
                log,
                &[
                    ("TWINBLK_DRILL_SITE", &f.site),
                    ("TWINBLK_DRILL_PHASE", phase),
                ],
                timeout,
            )
        }
        FaultKind::CutSite | FaultKind::CutLink => twinlink(f, !restore),
    }
}

/// Percentile `p` (0..=1) of sorted `v`.
fn pct(v: &[u64], p: f64) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v.get(i.min(v.len() - 1)).copied()
}

/// A moment of the drill.
#[derive(Debug, Clone, Serialize)]
struct Event {
    t_us: u64,
    what: String,
}

/// The drill's state as it runs.
struct Run {
    cfg: DrillConfig,
    t0: Instant,
    events: Vec<Event>,
    progress: bool,
}

impl Run {
    fn event(&mut self, what: impl Into<String>) -> u64 {
        let t_us = us(self.t0);
        let what = what.into();
        if self.progress {
            eprintln!("drill {:8.3} s  {what}", secs(t_us));
        }
        self.events.push(Event { t_us, what });
        t_us
    }
}

/// Check both sites answer and the volume is in sync; their `daemon_info` and site ids.
fn precheck(cfg: &DrillConfig) -> Result<Vec<(Value, Option<u64>)>, DrillError> {
    let mut out = Vec::new();
    for s in &cfg.sites {
        let info = ctl::call(&s.socket, "daemon_info", Value::Null)?;
        let st = ctl::call(&s.socket, "mirror_status", Value::Null)?;
        let m = mirror_entry(&st, &cfg.volume).ok_or_else(|| {
            DrillError::NotReady(format!(
                "site {}: volume {} is not mirrored there",
                s.name, cfg.volume
            ))
        })?;
        let smp = Sample::from_status(0, 0, Some(&m));
        if !smp.in_sync() {
            return Err(DrillError::NotReady(format!(
                "site {}: volume {} is not up and in sync (state {}, link up {}, dirty {} B, resync {}): a drill starts only on a healthy cluster (see `twinblk-ctl status`)",
                s.name, cfg.volume, smp.state, smp.link_up, smp.dirty_bytes, smp.resync_running
            )));
        }
        if info["mirror"]["site"].as_str().is_some_and(|n| n != s.name) {
            return Err(DrillError::NotReady(format!(
                "the socket of site {} answers as site {} (check the [[site]] tables)",
                s.name, info["mirror"]["site"]
            )));
        }
        let id = info["mirror"]["site_id"].as_u64();
        out.push((info, id));
    }
    Ok(out)
}

/// Run the drill described by the config at `config_path`.
pub fn run(config_path: &Path, progress: bool) -> Result<Outcome, DrillError> {
    let (cfg, config_hash) = DrillConfig::load(config_path)?;
    let key = Key::read(&cfg.report.key_file)?;
    let history = sign::verify_history(&key, &cfg.report.history)?;
    let infos = precheck(&cfg)?;
    let prepared = match &cfg.sandbox {
        Some(sb) => Some(sandbox::precheck(&cfg, sb)?),
        None => None,
    };
    std::fs::create_dir_all(&cfg.report.dir)
        .map_err(|e| DrillError::Failed(format!("{}: {e}", cfg.report.dir.display())))?;
    let started = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let started_unix_ms = u64::try_from(started.as_millis()).unwrap_or(0);
    let run_id = started.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32);
    let id = format!("{}-{:08x}", utc_compact(started.as_secs()), run_id as u32);
    let cmd_log = cfg.report.dir.join(format!("drill-{id}-commands.log"));
    let mut r = Run {
        cfg: cfg.clone(),
        t0: Instant::now(),
        events: Vec::new(),
        progress,
    };
    let mut report = match (&cfg.fault, &cfg.targets) {
        (Some(f), Some(t)) => disruptive(&mut r, f, t, run_id, &id, &infos, &cmd_log)?,
        _ => {
            r.event(format!("drill {id} starts: the sandbox drill only"));
            json!({
                "schema": SCHEMA,
                "tool": {"name": "twinblk-ctl", "version": env!("CARGO_PKG_VERSION")},
                "volume": cfg.volume,
                "sites": sites_json(&cfg, &infos),
                "result": {"pass": true, "checks": []},
                "not_covered": NOT_COVERED,
            })
        }
    };
    let mut kind: Vec<&str> = cfg.fault.iter().map(|f| f.kind.as_str()).collect();
    if let (Some(sb), Some(prep)) = (&cfg.sandbox, &prepared) {
        kind.push("sandbox");
        // Its own run id: the disruptive part's stamps are never taken for this part's.
        let part = sandbox::run(&mut r, sb, prep, run_id.rotate_left(1) ^ 1, &id, &cmd_log)?;
        let mut checks = report["result"]["checks"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        checks.extend(part.checks);
        report["result"] =
            json!({"pass": checks.iter().all(|c| c["pass"] == true), "checks": checks});
        report["sandbox"] = part.report;
        if cfg.fault.is_none() {
            report["load"] = part.load;
        }
    }
    report["kind"] = json!(kind.join("+"));
    report["events"] = json!(r.events);
    report["id"] = json!(id);
    report["started_unix_ms"] = json!(started_unix_ms);
    report["started_utc"] = json!(utc_iso(started.as_secs()));
    report["config"] = json!({"path": config_path.display().to_string(), "sha256": config_hash});
    report["history"] = json!({
        "path": cfg.report.history.display().to_string(),
        "entries_before": history.entries,
        "verified_before": history.ok,
        "problems": history.problems,
    });
    report["trend"] = Value::Array(
        history
            .parsed
            .iter()
            .rev()
            .take(cfg.report.trend)
            .rev()
            .cloned()
            .collect(),
    );
    report["command_log"] = json!(cmd_log.display().to_string());
    let pass = report["result"]["pass"] == true;
    sign::sign_report(&key, &mut report)?;
    let json_path = cfg.report.dir.join(format!("drill-{id}.json"));
    let html_path = cfg.report.dir.join(format!("drill-{id}.html"));
    let json_text = serde_json::to_string_pretty(&report).unwrap_or_default();
    std::fs::write(&json_path, &json_text)
        .map_err(|e| DrillError::Failed(format!("{}: {e}", json_path.display())))?;
    std::fs::write(&html_path, html::render(&report))
        .map_err(|e| DrillError::Failed(format!("{}: {e}", html_path.display())))?;
    use sha2::Digest;
    let entry = json!({
        "id": id,
        "started_utc": report["started_utc"],
        "kind": report["kind"],
        "volume": cfg.volume,
        "failed_site": report["failed_site"],
        "pass": pass,
        "rto_s": report["rto"]["rto_s"],
        "rpo_writes": report["rpo"]["lost_writes"],
        "rpo_verified": report["rpo"]["verified"],
        "resync_s": report["resync"]["resync_s"],
        "resync_bytes": report["resync"]["resync_bytes"],
        "view_open_s": report["sandbox"]["view"]["open_s"],
        "sandbox_mismatches": report["sandbox"]["check"]["mismatches"],
        "config_sha256": report["config"]["sha256"],
        "report": json_path.display().to_string(),
        "report_sha256": config::hex(&sha2::Sha256::digest(json_text.as_bytes())),
        "report_signature": report["signature"]["value"],
    });
    sign::append_history(&key, &cfg.report.history, &history.last_sig, &entry)?;
    Ok(Outcome {
        report,
        pass,
        json_path,
        html_path,
    })
}

/// The disruptive drill (docs/drill.md, "What a drill does", steps 2 to 8): its report, not yet
/// signed, without id, times, config, history and trend.
#[allow(clippy::too_many_arguments)]
fn disruptive(
    r: &mut Run,
    f: &FaultConfig,
    targets_cfg: &Targets,
    run_id: u64,
    id: &str,
    infos: &[(Value, Option<u64>)],
    cmd_log: &Path,
) -> Result<Value, DrillError> {
    let cfg = r.cfg.clone();
    let progress = r.progress;
    let victim = cfg.site_index(&f.site);
    let t0 = r.t0;
    r.event(format!(
        "drill {id} starts: {} of site {}",
        f.kind.as_str(),
        f.site
    ));
    let mut pollers = Pollers::start(&cfg, t0)?;
    let ctl_load = Arc::new(LoadControl::default());
    ctl_load.drill_begins();
    let targets: Vec<(String, String)> = cfg
        .sites
        .iter()
        .map(|s| s.nbd_endpoint())
        .collect::<Result<_, _>>()?;
    let mut writers = Vec::new();
    for i in 0..cfg.sites.len() {
        let spec = WriterSpec {
            id: i,
            targets: targets.clone(),
            block_size: cfg.load.block_size,
            first_block: cfg.load.first_block,
            blocks: cfg.load.blocks_per_writer,
            run: run_id,
            timeout: Duration::from_secs_f64(cfg.load.write_timeout_s),
        };
        match Writer::start(spec, t0, Arc::clone(&ctl_load)) {
            Ok(w) => writers.push(w),
            Err(e) => {
                stop_load(&ctl_load, &mut writers);
                return Err(DrillError::Failed(format!("starting a writer: {e}")));
            }
        }
    }
    r.event("load started (one writer per site)");
    std::thread::sleep(Duration::from_secs_f64(cfg.timing.baseline_s));
    let baseline_acked: usize = writers
        .iter()
        .map(|w| {
            w.log
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .writes
                .iter()
                .filter(|x| x.ok)
                .count()
        })
        .sum();
    if baseline_acked == 0 {
        stop_load(&ctl_load, &mut writers);
        let errs: Vec<String> = writers
            .iter()
            .flat_map(|w| {
                w.log
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .errors
                    .clone()
            })
            .map(|e| e.1)
            .collect();
        return Err(DrillError::Failed(format!(
            "no write was acknowledged during the baseline (check the [[site]] nbd endpoints): {}",
            errs.join("; ")
        )));
    }

    // The fault.
    let fault_us = r.event(format!("fault: {} of site {}", f.kind.as_str(), f.site));
    ctl_load.fault_begins();
    if let Err(e) = fault(f, false, cmd_log) {
        r.event(format!("injecting the fault failed: {e}; restoring"));
        let _ = fault(f, true, cmd_log);
        stop_load(&ctl_load, &mut writers);
        return Err(DrillError::Failed(format!("injecting the fault: {e}")));
    }
    let injected_us = r.event("fault injected");

    // Failover: until a write issued after the fault is acknowledged at the survivor.
    let deadline = Instant::now() + Duration::from_secs_f64(cfg.timing.failover_wait_s);
    let mut survivor = 1 - victim;
    let mut first_ack: Option<WriteRec> = None;
    while Instant::now() < deadline {
        survivor = actual_survivor(&pollers.snapshot(), fault_us).unwrap_or(1 - victim);
        first_ack = first_ack_after(&writers, survivor, injected_us);
        if first_ack.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    match &first_ack {
        Some(a) => {
            let t = a.done_us;
            r.events.push(Event {
                t_us: t,
                what: format!(
                    "first write acknowledged at the survivor {}",
                    cfg.sites[survivor].name
                ),
            });
            if progress {
                eprintln!(
                    "drill {:8.3} s  RTO {:.3} s",
                    secs(us(t0)),
                    secs(t - fault_us)
                );
            }
        }
        None => {
            r.event(format!(
                "no write acknowledged at {} within {} s of the fault",
                cfg.sites[survivor].name, cfg.timing.failover_wait_s
            ));
        }
    }
    // Read back at once, with the load paused: the writes at risk from the fault are still
    // on their blocks (load.rs, "Regions"); the load then goes on for observe_s.
    let (addr_s, export_s) = &targets[survivor];
    let timeout = Duration::from_secs_f64(cfg.load.write_timeout_s);
    r.event(format!(
        "read-back at the survivor {} (load paused)",
        cfg.sites[survivor].name
    ));
    let rb_survivor = load::paused(&ctl_load, &writers, timeout, || {
        load::check(
            &cfg.sites[survivor].name,
            addr_s,
            export_s,
            &writers,
            timeout,
        )
    });
    r.event(format!(
        "read-back at {}: {} blocks, {} lost{}; load resumed",
        cfg.sites[survivor].name,
        rb_survivor.blocks_read,
        rb_survivor.lost.len(),
        rb_survivor
            .error
            .as_deref()
            .map(|e| format!(", incomplete: {e}"))
            .unwrap_or_default()
    ));
    std::thread::sleep(Duration::from_secs_f64(cfg.timing.observe_s));

    // Restore and resync.
    let before_restore = pollers.snapshot();
    let restore_us = r.event(format!("restore site {}", f.site));
    let restore_err = fault(f, true, cmd_log).err();
    let restored_us = match &restore_err {
        Some(e) => r.event(format!("restoring failed: {e}")),
        None => r.event("restored"),
    };
    let deadline = Instant::now() + Duration::from_secs_f64(cfg.timing.resync_wait_s);
    let mut in_sync_us = None;
    while restore_err.is_none() && Instant::now() < deadline {
        let s = pollers.snapshot();
        if let Some(t) = both_in_sync_since(&s, restored_us, cfg.sites.len()) {
            in_sync_us = Some(t);
            break;
        }
        std::thread::sleep(Duration::from_millis(cfg.timing.poll_ms.min(50)));
    }
    match in_sync_us {
        Some(t) => {
            r.events.push(Event {
                t_us: t,
                what: "both sites up and in sync".into(),
            });
        }
        None => {
            r.event("the sites were not in sync again within timing.resync_wait_s");
        }
    }
    let after_sync = pollers.snapshot();
    let resync_bytes =
        in_sync_us.map(|_| resync_delta(&before_restore, &after_sync, cfg.sites.len()));
    // Read back at both sites at once, with the load paused: each block's newest write the
    // survivor acknowledged alone is still there to be found at the resynced site.
    let mut rb_synced = Vec::new();
    if in_sync_us.is_some() {
        r.event("read-back at both sites (load paused)");
        rb_synced = load::paused(&ctl_load, &writers, timeout, || {
            cfg.sites
                .iter()
                .enumerate()
                .map(|(i, s)| load::check(&s.name, &targets[i].0, &targets[i].1, &writers, timeout))
                .collect::<Vec<_>>()
        });
        for rb in &rb_synced {
            r.event(format!(
                "read-back at {}: {} blocks, {} lost",
                rb.site,
                rb.blocks_read,
                rb.lost.len()
            ));
        }
    }

    // Back home, then stop the load.
    ctl_load.home_ok.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs_f64(cfg.timing.after_s));
    let stop_us = r.event("load stops");
    stop_load(&ctl_load, &mut writers);
    pollers.stop();
    let samples = pollers.snapshot();

    // Read back at both sites, then compare the replicas.
    let mut rb_final = Vec::new();
    if in_sync_us.is_some() {
        for (i, s) in cfg.sites.iter().enumerate() {
            let rb = load::check(&s.name, &targets[i].0, &targets[i].1, &writers, timeout);
            r.event(format!(
                "read-back at {}: {} blocks, {} lost",
                s.name,
                rb.blocks_read,
                rb.lost.len()
            ));
            rb_final.push(rb);
        }
    }
    let verify = if in_sync_us.is_some() {
        let sites: Vec<ctl::SiteArg> = cfg
            .sites
            .iter()
            .map(|s| ctl::SiteArg {
                label: Some(s.name.clone()),
                socket: s.socket.clone(),
            })
            .collect();
        let opts = ctl::verify::VerifyOpts {
            volume: cfg.volume.clone(),
            region: 1 << 20,
            rate: 0,
            progress: false,
        };
        let v = ctl::verify::verify(&sites, &opts);
        r.event(match &v {
            Ok(v) if v.identical => format!(
                "replicas identical ({} regions compared)",
                v.regions_compared
            ),
            Ok(v) => format!("replicas DIFFER in {} region(s)", v.differing.len()),
            Err(e) => format!("replica comparison not done: {e}"),
        });
        match v {
            Ok(v) => {
                json!({"done": true, "identical": v.identical, "regions_compared": v.regions_compared,
                "settled_on_recheck": v.settled_on_recheck, "differing": v.differing, "elapsed_s": v.elapsed_s, "error": null})
            }
            Err(e) => json!({"done": false, "identical": false, "error": e.to_string()}),
        }
    } else {
        json!({"done": false, "identical": false, "error": "the sites never got back in sync"})
    };

    // The report.
    let m = Measured {
        fault_us,
        injected_us,
        restore_us,
        restored_us,
        in_sync_us,
        stop_us,
        survivor,
        victim,
        first_ack,
        resync_bytes,
    };
    Ok(assemble(
        r,
        f,
        targets_cfg,
        &m,
        &writers,
        &samples,
        infos,
        &rb_survivor,
        &rb_synced,
        &rb_final,
        verify,
    ))
}

fn stop_load(ctl_load: &LoadControl, writers: &mut [Writer]) {
    ctl_load.stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join();
    }
}

/// The site that became `survivor` first after the fault, if any did.
fn actual_survivor(samples: &[Sample], fault_us: u64) -> Option<usize> {
    samples
        .iter()
        .filter(|s| s.t_us >= fault_us && s.state == "survivor")
        .min_by_key(|s| s.t_us)
        .map(|s| s.site)
}

/// The first write issued after `injected_us` (the fault's command or twinlink cut returned,
/// so the fault is in effect) and acknowledged by site `survivor`. A write in flight at the
/// fault that completes is not recovery yet, nor is one sent while the command still ran
/// (the site may have mirrored it before it died); with queue depth 1 the next write is sent
/// at once, so this is the moment the survivor serves again.
fn first_ack_after(writers: &[Writer], survivor: usize, injected_us: u64) -> Option<WriteRec> {
    writers
        .iter()
        .filter_map(|w| {
            let l = w.log.lock().unwrap_or_else(|p| p.into_inner());
            l.writes
                .iter()
                .filter(|x| x.ok && x.site == survivor && x.issued_us >= injected_us)
                .min_by_key(|x| x.done_us)
                .copied()
        })
        .min_by_key(|x| x.done_us)
}

/// The time of the first poll round after `after_us` in which every site was in sync (each
/// site's latest sample at that time in sync).
fn both_in_sync_since(samples: &[Sample], after_us: u64, sites: usize) -> Option<u64> {
    let mut latest: Vec<Option<&Sample>> = vec![None; sites];
    for s in samples.iter().filter(|s| s.t_us > after_us) {
        if s.site < sites {
            latest[s.site] = Some(s);
        }
        if latest.iter().all(|l| l.is_some_and(Sample::in_sync)) {
            return latest.iter().flatten().map(|l| l.t_us).max();
        }
    }
    None
}

/// Bytes copied by resyncs between the two snapshots, summed over the sites (a counter that
/// went down belongs to a restarted daemon: its whole value is new).
fn resync_delta(before: &[Sample], after: &[Sample], sites: usize) -> u64 {
    let last = |v: &[Sample], i: usize| {
        v.iter()
            .rev()
            .find(|s| s.site == i && s.reachable)
            .map(|s| s.resync_bytes)
    };
    (0..sites)
        .map(|i| match (last(before, i), last(after, i)) {
            (Some(b), Some(a)) if a >= b => a - b,
            (_, Some(a)) => a,
            _ => 0,
        })
        .sum()
}

/// What the run measured directly.
struct Measured {
    fault_us: u64,
    injected_us: u64,
    restore_us: u64,
    restored_us: u64,
    in_sync_us: Option<u64>,
    stop_us: u64,
    survivor: usize,
    victim: usize,
    first_ack: Option<WriteRec>,
    resync_bytes: Option<u64>,
}

/// Build the report (unsigned, without id, times, config and trend).
#[allow(clippy::too_many_arguments)]
fn assemble(
    r: &Run,
    f: &FaultConfig,
    targets: &Targets,
    m: &Measured,
    writers: &[Writer],
    samples: &[Sample],
    infos: &[(Value, Option<u64>)],
    rb_survivor: &Readback,
    rb_synced: &[Readback],
    rb_final: &[Readback],
    verify: Value,
) -> Value {
    let cfg = &r.cfg;
    let names: Vec<&str> = cfg.sites.iter().map(|s| s.name.as_str()).collect();
    let (writer_json, all) = load_records(writers, &names);
    // Latency baseline: writes issued in the last three quarters of the baseline.
    let warm = (cfg.timing.baseline_s * 0.25 * 1e6) as u64;
    let mut base: Vec<u64> = all
        .iter()
        .filter(|x| x.ok && x.issued_us >= warm && x.done_us < m.fault_us)
        .map(|x| x.done_us - x.issued_us)
        .collect();
    base.sort_unstable();
    let base_p50 = pct(&base, 0.5);
    let base_p99 = pct(&base, 0.99);
    let last_ack_before = all
        .iter()
        .filter(|x| x.ok && x.done_us < m.fault_us)
        .map(|x| x.done_us)
        .max();
    let first_ack_us = m.first_ack.map(|a| a.done_us);
    // Back to normal: the rolling median of writes issued after the fault.
    let mut normal_us = None;
    if let (Some(b), Some(fa)) = (base_p50, first_ack_us) {
        let mut win: std::collections::VecDeque<u64> = Default::default();
        for x in all
            .iter()
            .filter(|x| x.ok && x.issued_us >= m.fault_us && x.done_us >= fa)
        {
            win.push_back(x.done_us - x.issued_us);
            if win.len() > ROLLING_WRITES {
                win.pop_front();
            }
            if win.len() == ROLLING_WRITES {
                let mut v: Vec<u64> = win.iter().copied().collect();
                v.sort_unstable();
                if pct(&v, 0.5).is_some_and(|p| p as f64 <= b as f64 * NORMAL_LATENCY_FACTOR) {
                    normal_us = Some(x.done_us);
                    break;
                }
            }
        }
    }
    let (width, series) = latency_series(&all, m.stop_us);
    // Site states (changes only) and the witness's decisions.
    let mut states = Vec::new();
    let mut decisions = Vec::new();
    for site in 0..cfg.sites.len() {
        let mut prev: Option<&Sample> = None;
        for s in samples.iter().filter(|s| s.site == site) {
            let changed = |p: &Sample| {
                (
                    &p.state,
                    &p.path_state,
                    p.link_up,
                    p.reachable,
                    p.resync_running,
                ) != (
                    &s.state,
                    &s.path_state,
                    s.link_up,
                    s.reachable,
                    s.resync_running,
                )
            };
            if prev.is_none_or(changed) {
                states.push(
                    json!({"t_us": s.t_us, "site": names[site], "reachable": s.reachable,
                    "state": s.state, "path_state": s.path_state, "link_up": s.link_up,
                    "dirty_bytes": s.dirty_bytes, "resync_running": s.resync_running}),
                );
            }
            let wchanged = |p: &Sample| {
                (p.holder, p.epoch, &p.last_answer) != (s.holder, s.epoch, &s.last_answer)
            };
            if s.reachable && prev.filter(|p| p.reachable).is_none_or(wchanged) {
                let holder = s.holder.map(|h| {
                    infos
                        .iter()
                        .position(|(_, id)| *id == Some(h))
                        .map(|i| names[i].to_string())
                        .unwrap_or_else(|| format!("site id {h}"))
                });
                decisions.push(
                    json!({"t_us": s.t_us, "seen_by": names[site], "holder": holder,
                    "epoch": s.epoch, "last_answer": s.last_answer, "state": s.state}),
                );
            }
            prev = Some(s);
        }
    }
    let sv: Vec<&Sample> = samples.iter().filter(|s| s.site == m.survivor).collect();
    let path_before = sv
        .iter()
        .rev()
        .find(|s| s.t_us < m.fault_us && s.reachable)
        .map(|s| s.path_state.clone());
    let after_fault = |f: &dyn Fn(&Sample) -> bool| {
        sv.iter()
            .find(|s| s.t_us >= m.fault_us && s.t_us <= m.restore_us && f(s))
            .map(|s| s.t_us)
    };
    // Detection: the survivor's first sign of the fault (link down, state or path changed).
    let detection_us = after_fault(&|s| {
        !s.link_up || s.state != "up" || path_before.as_ref().is_some_and(|p| s.path_state != *p)
    });
    let decision_us =
        after_fault(&|s| s.state == "survivor" || s.last_answer.as_deref() == Some("granted"));
    let path_change_us = path_before
        .as_ref()
        .and_then(|p| after_fault(&|s| s.reachable && s.path_state != *p));
    // Settled: the survivor's last path-state change before the restore (e.g. back to
    // optimized after a transient inaccessible).
    let path_settled_us = sv
        .windows(2)
        .rev()
        .find(|w| {
            w[1].t_us >= m.fault_us
                && w[1].t_us <= m.restore_us
                && w[1].reachable
                && w[0].path_state != w[1].path_state
        })
        .map(|w| w[1].t_us);
    let path_after = sv
        .iter()
        .rev()
        .find(|s| s.t_us <= m.restore_us && s.reachable)
        .map(|s| s.path_state.clone());
    let rel = |t: Option<u64>| t.map(|t| secs(t.saturating_sub(m.fault_us)));
    let rto_us = first_ack_us.map(|a| a - m.fault_us);
    // RPO.
    let mut lost: Vec<load::Lost> = rb_survivor.lost.clone();
    for rb in rb_synced.iter().chain(rb_final) {
        for l in &rb.lost {
            if !lost.iter().any(|x| x.writer == l.writer && x.seq == l.seq) {
                lost.push(l.clone());
            }
        }
    }
    let rpo_verified = rb_survivor.complete
        && rb_synced.len() == cfg.sites.len()
        && rb_final.len() == cfg.sites.len()
        && rb_synced.iter().chain(rb_final).all(|r| r.complete);
    let lost_n = lost.len() as u64;
    let lost_seconds = lost
        .iter()
        .map(|l| secs(m.fault_us.saturating_sub(l.acked_us)))
        .fold(0.0, f64::max);
    let rpo_display = match (rpo_verified, lost_n) {
        (true, 0) => "0 (verified)".to_string(),
        (true, n) => format!("{n} writes lost (verified)"),
        (false, n) => format!("not verified ({n} lost among the blocks read)"),
    };
    let resync_s = m.in_sync_us.map(|t| secs(t.saturating_sub(m.restore_us)));
    let t = targets;
    let identical = verify["identical"] == true;
    let checks = vec![
        check(
            "rto",
            format!("<= {} s", t.max_rto_s),
            rto_us
                .map(|r| format!("{:.3} s", secs(r)))
                .unwrap_or_else(|| "not measured (no write acknowledged at the survivor)".into()),
            rto_us.is_some_and(|r| secs(r) <= t.max_rto_s),
        ),
        check(
            "rpo",
            format!("<= {} writes, verified", t.max_rpo_writes),
            rpo_display.clone(),
            rpo_verified && lost_n <= t.max_rpo_writes,
        ),
        check(
            "resync",
            format!("<= {} s", t.max_resync_s),
            resync_s
                .map(|s| format!("{s:.3} s"))
                .unwrap_or_else(|| "not measured (never in sync again)".into()),
            resync_s.is_some_and(|s| s <= t.max_resync_s),
        ),
        check(
            "replicas",
            "identical".into(),
            if identical {
                "identical".into()
            } else {
                format!(
                    "not identical: {}",
                    verify["error"].as_str().unwrap_or("regions differ")
                )
            },
            identical,
        ),
    ];
    let pass = checks.iter().all(|c| c["pass"] == true);
    json!({
        "schema": SCHEMA,
        "tool": {"name": "twinblk-ctl", "version": env!("CARGO_PKG_VERSION")},
        "volume": cfg.volume,
        "kind": f.kind.as_str(),
        "failed_site": names[m.victim],
        "survivor": names[m.survivor],
        "sites": sites_json(cfg, infos),
        "targets": {"max_rto_s": t.max_rto_s, "max_rpo_writes": t.max_rpo_writes, "max_resync_s": t.max_resync_s},
        "result": {"pass": pass, "checks": checks},
        "rto": {
            "measured": rto_us.is_some(),
            "rto_s": rto_us.map(secs),
            "definition": "from the fault (its injection starts) to the acknowledgement, by the survivor, of the first write issued after the injection returned",
            "phases_s_after_fault": {
                "fault_injected": rel(Some(m.injected_us)),
                "detection": rel(detection_us),
                "witness_decision": rel(decision_us),
                "path_state_change": rel(path_change_us),
                "path_state_settled": rel(path_settled_us),
                "first_ack_at_survivor": rel(first_ack_us),
                "latency_back_to_normal": rel(normal_us),
            },
            "timestamps_us": {
                "fault": m.fault_us, "fault_injected": m.injected_us,
                "last_ack_before_fault": last_ack_before,
                "detection": detection_us, "witness_decision": decision_us,
                "path_state_change": path_change_us, "path_state_settled": path_settled_us,
                "first_ack_at_survivor": first_ack_us,
                "latency_back_to_normal": normal_us,
                "restore": m.restore_us, "restored": m.restored_us,
                "in_sync": m.in_sync_us, "load_stopped": m.stop_us,
            },
            "survivor_path_state": {"before": path_before, "after": path_after},
            "poll_interval_ms": cfg.timing.poll_ms,
        },
        "rpo": {
            "verified": rpo_verified,
            "display": rpo_display,
            "lost_writes": lost_n,
            "lost_bytes": lost_n * u64::from(cfg.load.block_size),
            "lost_seconds": lost_seconds,
            "lost": lost.iter().take(MAX_LOST_LISTED).collect::<Vec<_>>(),
            "readback_at_survivor": rb_survivor,
            "readback_after_resync": rb_synced,
            "readback_at_end": rb_final,
        },
        "resync": {
            "measured": resync_s.is_some(),
            "resync_s": resync_s,
            "resync_bytes": m.resync_bytes,
        },
        "verify": verify,
        "load": {
            "block_size": cfg.load.block_size,
            "writers": writer_json,
            "baseline_p50_us": base_p50,
            "baseline_p99_us": base_p99,
            "normal_factor": NORMAL_LATENCY_FACTOR,
            "series_bucket_us": width,
            "series": series,
        },
        "witness_decisions": decisions,
        "site_states": states,
        "events": r.events,
        "not_covered": NOT_COVERED,
    })
}

/// Per writer its summary for the report, and every write of every writer by answer time.
fn load_records(writers: &[Writer], names: &[&str]) -> (Vec<Value>, Vec<WriteRec>) {
    let mut all: Vec<WriteRec> = Vec::new();
    let mut writer_json = Vec::new();
    for w in writers {
        let l = w.log.lock().unwrap_or_else(|p| p.into_inner());
        all.extend(l.writes.iter().copied());
        let acked = l.writes.iter().filter(|x| x.ok).count();
        writer_json.push(json!({
            "id": w.spec.id,
            "home": names.get(w.spec.id),
            "blocks": [w.spec.first_block + w.spec.id as u64 * w.spec.blocks, w.spec.first_block + (w.spec.id as u64 + 1) * w.spec.blocks],
            "writes": l.writes.len(),
            "acked": acked,
            "failed": l.writes.len() - acked,
            "connect_failures": l.connect_failures,
            "errors": l.errors.iter().map(|(t, e)| json!({"t_us": t, "error": e})).collect::<Vec<_>>(),
        }));
    }
    all.sort_by_key(|x| x.done_us);
    (writer_json, all)
}

/// The latency series up to `end_us` of writes sorted by answer time: the bucket width (µs)
/// and per bucket the acknowledged and failed writes, p50, p99 and maximum latency.
fn latency_series(all: &[WriteRec], end_us: u64) -> (u64, Vec<Value>) {
    let end = end_us.max(1);
    let width = (end / MAX_SERIES_POINTS).max(100_000);
    let mut series = Vec::new();
    let mut i = 0;
    let mut t = 0;
    while t <= end {
        let mut lat = Vec::new();
        let mut failed = 0;
        while i < all.len() && all[i].done_us < t + width {
            if all[i].ok {
                lat.push(all[i].done_us - all[i].issued_us);
            } else {
                failed += 1;
            }
            i += 1;
        }
        lat.sort_unstable();
        series.push(json!({"t_us": t, "acked": lat.len(), "failed": failed,
            "p50_us": pct(&lat, 0.5), "p99_us": pct(&lat, 0.99), "max_us": lat.last()}));
        t += width;
    }
    (width, series)
}

/// Each site as the report lists it.
fn sites_json(cfg: &DrillConfig, infos: &[(Value, Option<u64>)]) -> Vec<Value> {
    cfg.sites
        .iter()
        .zip(infos)
        .map(|(s, (info, id))| {
            json!({
                "name": s.name, "socket": s.socket.display().to_string(), "nbd": s.nbd,
                "site_id": id, "version": info["version"], "daemon_info": info,
            })
        })
        .collect()
}

fn check(name: &str, target: String, measured: String, pass: bool) -> Value {
    json!({"name": name, "target": target, "measured": measured, "pass": pass})
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_iso(unix: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `YYYYMMDDTHHMMSSZ` (file names).
fn utc_compact(unix: u64) -> String {
    utc_iso(unix).replace(['-', ':'], "")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smp(t_us: u64, site: usize, state: &str, dirty: u64) -> Sample {
        let mut s = Sample::from_status(
            t_us,
            site,
            Some(
                &json!({"state": state, "path_state": "optimized", "link_up": state == "up",
                "dirty_bytes": dirty, "resync_running": false, "resync_bytes": 0}),
            ),
        );
        s.site = site;
        s
    }

    #[test]
    fn dates_are_utc() {
        assert_eq!(utc_iso(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_iso(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_iso(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(utc_compact(1_700_000_000), "20231114T221320Z");
    }

    #[test]
    fn in_sync_needs_every_site_in_the_same_round() {
        let s = vec![
            smp(10, 0, "survivor", 5),
            smp(11, 1, "unreachable", 0),
            smp(20, 0, "up", 0),
            smp(21, 1, "resyncing", 0),
            smp(30, 0, "up", 0),
            smp(31, 1, "up", 0),
        ];
        assert_eq!(both_in_sync_since(&s, 0, 2), Some(31));
        assert_eq!(both_in_sync_since(&s, 31, 2), None);
        assert_eq!(actual_survivor(&s, 0), Some(0));
        assert_eq!(actual_survivor(&s, 15), None);
    }

    #[test]
    fn resync_bytes_survive_a_restarted_counter() {
        let mk = |site, b| {
            let mut s = smp(0, site, "up", 0);
            s.resync_bytes = b;
            s
        };
        assert_eq!(
            resync_delta(&[mk(0, 100), mk(1, 50)], &[mk(0, 400), mk(1, 20)], 2),
            320
        );
        assert_eq!(pct(&[], 0.5), None);
        assert_eq!(pct(&[1, 2, 3], 0.5), Some(2));
    }
}
