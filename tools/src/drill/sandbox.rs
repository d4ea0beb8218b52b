//! The non-disruptive drill: a CDP sandbox view of one site's volume at a point `T` taken
//! while the drill's write load runs, checked against the writes the load logged, then
//! discarded, while production runs on (docs/drill.md, "The sandbox drill").
//!
//! Model: the load ([`super::load`]) runs from before the bookmark until after the view is
//! stopped. `T` is a CDP bookmark (`cdp_bookmark` at the site's control socket: the site's
//! own time, the clock its journal stamps records with). The drill notes, on its own clock,
//! when it sent the bookmark call (`sent`) and when the answer came (`answered`); `T` lies
//! between the two. The view is a `twinblk cdp view --bookmark NAME --sandbox` process the
//! drill starts and stops; it is read over NBD.
//!
//! The ordering rule (why the check is sound across two clocks): a write acknowledged before
//! `sent` was journaled at the site before its acknowledgement (the mirror acknowledges only
//! after both sites applied it, and the CDP layer stamps a record when it receives the
//! update), so its record's time is before `T`: it must be in the view, or a newer write of
//! the same block that was sent before `answered`. A write sent after `answered` reached the
//! site after `T` was read, so its record's time is after `T`: it must not be in the view.
//! Writes in flight across the call (sent before `answered`, not acknowledged before `sent`)
//! may be in the view or not. With queue depth 1 per writer that is at most one write per
//! writer.
//!
//! Invariants: the check judges every block holding a write of this part's load; a block
//! whose content is not a valid stamp of its writer counts as a mismatch when a write was
//! acknowledged to it before `sent`. The sandbox's writes use a pattern that is never a valid
//! stamp, so if one ever reached production the live read-back after the view stopped would
//! report it as a lost write. The view process is always stopped (SIGTERM, then SIGKILL after
//! [`VIEW_STOP_WAIT`]) and the drill's bookmarks are always deleted, also when a step fails;
//! every wait is bounded.

use super::config::{ConfigError, DrillConfig, SandboxConfig, ViewPoint};
use super::load::{self, LoadControl, Readback, Writer, WriterSpec};
use super::nbd::NbdClient;
use super::{DrillError, Run, check, latency_series, load_records, pct, secs, us};
use crate::ctl;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Most time the view gets to stop after SIGTERM (it finishes in-flight I/O first) before it
/// is killed.
const VIEW_STOP_WAIT: Duration = Duration::from_secs(30);
/// Mismatches listed one by one in the report (all are counted).
const MAX_MISMATCHES_LISTED: usize = 100;
/// Bytes at the start of every block the drill writes into the sandbox: never a load stamp.
const SANDBOX_MAGIC: &[u8; 8] = b"TWBSANDB";

/// What the sandbox drill needs to know before it starts, found by [`precheck`].
pub struct Prepared {
    /// The volume's CDP directory as the view process reads it.
    pub dir: PathBuf,
    /// The `twinblk` binary.
    pub twinblk: PathBuf,
    /// The site's `cdp_status` entry for the volume.
    pub status: Value,
}

/// The sandbox part's outcome.
pub struct Part {
    /// Its checks (joined to the report's `result.checks`).
    pub checks: Vec<Value>,
    /// The report's `sandbox` member.
    pub report: Value,
    /// The report's `load` member (used when the drill has no disruptive part).
    pub load: Value,
}

/// Check that the site journals the volume and that the `twinblk` binary is there (before
/// any drill part runs).
pub fn precheck(cfg: &DrillConfig, sb: &SandboxConfig) -> Result<Prepared, DrillError> {
    let site = &cfg.sites[cfg.site_index(&sb.site)];
    let st = ctl::call(&site.socket, "cdp_status", Value::Null)?;
    let status = st
        .as_array()
        .and_then(|a| a.iter().find(|c| c["volume"] == cfg.volume.as_str()))
        .cloned()
        .ok_or_else(|| {
            DrillError::NotReady(format!(
                "site {}: volume {} has no continuous data protection ([volume.cdp]): nothing to view",
                site.name, cfg.volume
            ))
        })?;
    if status["journal"] != "running" {
        return Err(DrillError::NotReady(format!(
            "site {}: the CDP journal of {} is {} (its history has ended)",
            site.name, cfg.volume, status["journal"]
        )));
    }
    let dir = match (&sb.dir, status["dir"].as_str()) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) => PathBuf::from(d),
        (None, None) => {
            return Err(DrillError::NotReady(format!(
                "site {}: cdp_status names no directory for {}",
                site.name, cfg.volume
            )));
        }
    };
    if !dir.join("cdp.meta").is_file() {
        return Err(ConfigError::Invalid(format!(
            "{}: no CDP history here (the view runs on the drill's host: give sandbox.dir as this host sees the site's directory)",
            dir.display()
        ))
        .into());
    }
    let twinblk = match &sb.twinblk {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("twinblk")))
            .unwrap_or_else(|| PathBuf::from("twinblk")),
    };
    if !twinblk.is_file() {
        return Err(ConfigError::Invalid(format!(
            "{}: no twinblk binary to serve the view (give sandbox.twinblk)",
            twinblk.display()
        ))
        .into());
    }
    Ok(Prepared {
        dir,
        twinblk,
        status,
    })
}

/// One block of the view judged wrong.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Mismatch {
    /// Writer.
    pub writer: usize,
    /// Block.
    pub block: u64,
    /// The newest sequence number acknowledged before the bookmark was asked for.
    pub expected_at_least: Option<u64>,
    /// What the view holds: `seq N`, or `not a stamp of this block`.
    pub found: String,
    /// Why it is wrong.
    pub why: String,
}

/// The outcome of reading every written block through the view.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ViewCheck {
    /// Blocks holding at least one write of the load (each is read).
    pub blocks_expected: u64,
    /// Blocks read through the view.
    pub blocks_checked: u64,
    /// Writes acknowledged before the bookmark call was sent (must be in the view).
    pub writes_before: u64,
    /// Writes in flight across the call (may be in the view or not).
    pub writes_in_flight: u64,
    /// Writes sent after the bookmark's answer (must not be in the view).
    pub writes_after: u64,
    /// Blocks judged wrong.
    pub mismatches: u64,
    /// The first of them.
    pub mismatch_list: Vec<Mismatch>,
    /// Every block was read (else why not).
    pub complete: bool,
    /// Why the check stopped early.
    pub error: Option<String>,
}

/// A write as the check needs it.
#[derive(Clone, Copy)]
struct W {
    issued_us: u64,
    done_us: u64,
    ok: bool,
}

/// Judge one block: `found` is the sequence number of the valid stamp the view holds (None:
/// not a stamp of this block's writer); `writes` the block's writes by sequence number. None
/// when the content is allowed (see the module's ordering rule).
fn judge(
    found: Option<u64>,
    writes: &HashMap<u64, W>,
    sent_us: u64,
    answered_us: u64,
) -> Option<(Option<u64>, String)> {
    let need = writes
        .iter()
        .filter(|(_, w)| w.ok && w.done_us < sent_us)
        .map(|(s, _)| *s)
        .max();
    match found {
        Some(s) => match writes.get(&s) {
            Some(w) if w.issued_us <= answered_us => match need {
                Some(n) if s < n => Some((
                    need,
                    format!("an older write: seq {n} was acknowledged before the bookmark"),
                )),
                _ => None,
            },
            _ => Some((
                need,
                format!("seq {s} was sent after the bookmark's answer: after T"),
            )),
        },
        None => need.map(|n| {
            (
                need,
                format!("seq {n} was acknowledged before the bookmark and is missing"),
            )
        }),
    }
}

/// Read, through the view at `(addr, export)`, every block the writers wrote, and judge each
/// against the writes logged so far (the view's point is fixed; writes logged after the
/// bookmark's answer must not be in it).
fn check_view(
    addr: &str,
    export: &str,
    writers: &[Writer],
    sent_us: u64,
    answered_us: u64,
    timeout: Duration,
) -> ViewCheck {
    let mut out = ViewCheck::default();
    // Per writer, per block, its writes.
    let mut per: Vec<std::collections::BTreeMap<u64, HashMap<u64, W>>> = Vec::new();
    for w in writers {
        let l = w.log.lock().unwrap_or_else(|p| p.into_inner());
        let mut m: std::collections::BTreeMap<u64, HashMap<u64, W>> = Default::default();
        for r in &l.writes {
            if r.ok && r.done_us < sent_us {
                out.writes_before += 1;
            } else if r.issued_us <= answered_us {
                out.writes_in_flight += 1;
            } else {
                out.writes_after += 1;
            }
            m.entry(r.block).or_default().insert(
                r.seq,
                W {
                    issued_us: r.issued_us,
                    done_us: r.done_us,
                    ok: r.ok,
                },
            );
        }
        out.blocks_expected += m.len() as u64;
        per.push(m);
    }
    let mut c = match NbdClient::connect(addr, export, timeout) {
        Ok(c) => c,
        Err(e) => {
            out.error = Some(format!("connect to the view: {e}"));
            return out;
        }
    };
    for (wi, blocks) in per.iter().enumerate() {
        let spec = &writers[wi].spec;
        for (&block, writes) in blocks {
            let data = match c.read(block * u64::from(spec.block_size), spec.block_size) {
                Ok(d) => d,
                Err(e) => {
                    out.error = Some(format!("read of block {block} through the view: {e}"));
                    return out;
                }
            };
            out.blocks_checked += 1;
            let found = load::parse_stamp(&data, spec.run, spec.id, block);
            if let Some((expected_at_least, why)) = judge(found, writes, sent_us, answered_us) {
                out.mismatches += 1;
                if out.mismatch_list.len() < MAX_MISMATCHES_LISTED {
                    out.mismatch_list.push(Mismatch {
                        writer: spec.id,
                        block,
                        expected_at_least,
                        found: found
                            .map(|s| format!("seq {s}"))
                            .unwrap_or_else(|| "not a stamp of this block".into()),
                        why,
                    });
                }
            }
        }
    }
    out.complete = true;
    out
}

/// The pattern the drill writes to `block` of the sandbox: `len` bytes, never a load stamp.
fn sandbox_pattern(len: usize, run: u64, block: u64) -> Vec<u8> {
    let mut b = vec![0u8; len];
    b[..8].copy_from_slice(SANDBOX_MAGIC);
    b[8..16].copy_from_slice(&run.to_le_bytes());
    b[16..24].copy_from_slice(&block.to_le_bytes());
    let mut x = run ^ block.rotate_left(23) ^ 0x2545_f491_4f6c_dd1d;
    for chunk in b[24..].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    b
}

/// Write the pattern to `blocks` of the sandbox, then read each back.
fn sandbox_write(
    addr: &str,
    export: &str,
    blocks: std::ops::Range<u64>,
    block_size: u32,
    run: u64,
    timeout: Duration,
) -> Value {
    let n = blocks.end - blocks.start;
    let res = (|| -> Result<u64, String> {
        let mut c =
            NbdClient::connect(addr, export, timeout).map_err(|e| format!("connect: {e}"))?;
        for b in blocks.clone() {
            let p = sandbox_pattern(block_size as usize, run, b);
            c.write(b * u64::from(block_size), &p)
                .map_err(|e| format!("write of block {b}: {e}"))?;
        }
        let mut same = 0;
        for b in blocks.clone() {
            let d = c
                .read(b * u64::from(block_size), block_size)
                .map_err(|e| format!("read of block {b}: {e}"))?;
            same += u64::from(d == sandbox_pattern(block_size as usize, run, b));
        }
        Ok(same)
    })();
    match res {
        Ok(same) => {
            json!({"blocks": n, "read_back": same, "ok": same == n, "first_block": blocks.start, "error": null})
        }
        Err(e) => {
            json!({"blocks": n, "read_back": 0, "ok": false, "first_block": blocks.start, "error": e})
        }
    }
}

/// A running view process.
struct View {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// How the view's start went.
#[derive(Default)]
struct Opened {
    /// `HOST:PORT` and export of its NBD endpoint.
    nbd: Option<(String, String)>,
    /// µs (drill clock) when its endpoints were printed.
    open_us: Option<u64>,
    error: Option<String>,
}

impl View {
    /// Start `twinblk cdp view` and wait (at most `wait`) until it serves.
    fn start(
        twinblk: &Path,
        dir: &Path,
        bookmark: &str,
        nbd: &str,
        log: &Path,
        wait: Duration,
        t0: Instant,
    ) -> (Option<View>, Opened) {
        let mut opened = Opened::default();
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map(std::process::Stdio::from)
            .unwrap_or_else(|_| std::process::Stdio::null());
        let spawned = std::process::Command::new(twinblk)
            .args(["cdp", "view", "--sandbox", "--name", "view", "--dir"])
            .arg(dir)
            .args(["--bookmark", bookmark, "--nbd", nbd])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                opened.error = Some(format!("{}: {e}", twinblk.display()));
                return (None, opened);
            }
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = child.stdout.take().and_then(|out| {
            std::thread::Builder::new()
                .name("drill-view-out".into())
                .spawn(move || {
                    for line in std::io::BufReader::new(out).lines() {
                        let Ok(line) = line else { break };
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                })
                .ok()
        });
        let mut view = View {
            child,
            lines: rx,
            reader,
        };
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match view.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.trim().strip_prefix("nbd://")
                        && let Some((addr, export)) = rest.split_once('/')
                    {
                        opened.nbd = Some((addr.to_string(), export.to_string()));
                    }
                    if line.contains("Ctrl-C") {
                        opened.open_us = Some(us(t0));
                        break;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    opened.error = Some(format!(
                        "the view did not serve within {} s",
                        wait.as_secs_f64()
                    ));
                    break;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    let st = view
                        .child
                        .wait()
                        .map(|s| s.to_string())
                        .unwrap_or_else(|e| e.to_string());
                    opened.error = Some(format!(
                        "the view stopped before serving ({st}); its messages are in {}",
                        log.display()
                    ));
                    break;
                }
            }
        }
        if opened.error.is_none() && opened.nbd.is_none() {
            opened.error = Some("the view printed no NBD endpoint".into());
        }
        (Some(view), opened)
    }

    /// SIGTERM, wait (bounded), SIGKILL if needed; how it ended.
    fn stop(mut self) -> (bool, String) {
        let pid = self.child.id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let t = Instant::now();
        let res = loop {
            match self.child.try_wait() {
                Ok(Some(st)) => break (st.success(), st.to_string()),
                Ok(None) if t.elapsed() >= VIEW_STOP_WAIT => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break (
                        false,
                        format!("killed: not stopped {VIEW_STOP_WAIT:?} after SIGTERM"),
                    );
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => break (false, e.to_string()),
            }
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        res
    }
}

/// Set bookmark `name` on the volume at `socket`: its site time in ns.
fn bookmark(socket: &Path, volume: &str, name: &str) -> Result<u64, String> {
    let a = ctl::call(
        socket,
        "cdp_bookmark",
        json!({"volume": volume, "name": name}),
    )
    .map_err(|e| format!("cdp_bookmark {name}: {e}"))?;
    a["time_ns"]
        .as_u64()
        .ok_or_else(|| format!("cdp_bookmark {name}: no time_ns in {a}"))
}

fn stop_load(ctl_load: &LoadControl, writers: &mut [Writer]) {
    ctl_load.stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join();
    }
}

/// Delete the drill's bookmarks; the errors.
fn delete_bookmarks(socket: &Path, volume: &str, names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter_map(|n| {
            ctl::call(
                socket,
                "cdp_bookmark_delete",
                json!({"volume": volume, "name": n}),
            )
            .err()
            .map(|e| format!("cdp_bookmark_delete {n}: {e}"))
        })
        .collect()
}

/// Run the sandbox drill (the load, the bookmark, the view, its checks, the cleanup).
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    r: &mut Run,
    sb: &SandboxConfig,
    prep: &Prepared,
    run_id: u64,
    id: &str,
    cmd_log: &Path,
) -> Result<Part, DrillError> {
    let cfg = r.cfg.clone();
    let t0 = r.t0;
    let site = cfg.site_index(&sb.site);
    let socket = cfg.sites[site].socket.clone();
    let vol = cfg.volume.as_str();
    let timeout = Duration::from_secs_f64(cfg.load.write_timeout_s);
    let name = format!("drill-{id}");
    let mut bookmarks: Vec<String> = Vec::new();
    r.event(format!(
        "sandbox drill: CDP history of {vol} at site {} ({}), view at the {} point",
        sb.site,
        prep.dir.display(),
        sb.point.as_str()
    ));
    let start_name = format!("drill-{id}-start");
    if sb.point == ViewPoint::BeforeLoad {
        bookmark(&socket, vol, &start_name).map_err(DrillError::Failed)?;
        bookmarks.push(start_name.clone());
        r.event(format!(
            "bookmark {start_name} before the load (the view opens there: the check must fail)"
        ));
    }
    // The load.
    let ctl_load = Arc::new(LoadControl::default());
    let targets: Vec<(String, String)> = cfg
        .sites
        .iter()
        .map(|s| s.nbd_endpoint())
        .collect::<Result<_, _>>()?;
    let mut writers = Vec::new();
    let fail = |r: &mut Run, ctl_load: &LoadControl, writers: &mut Vec<Writer>, e: String| {
        stop_load(ctl_load, writers);
        for d in delete_bookmarks(&socket, vol, &bookmarks) {
            r.event(d);
        }
        DrillError::Failed(e)
    };
    let load_start_us = us(t0);
    for i in 0..cfg.sites.len() {
        let spec = WriterSpec {
            id: i,
            targets: targets.clone(),
            block_size: cfg.load.block_size,
            first_block: cfg.load.first_block,
            blocks: cfg.load.blocks_per_writer,
            run: run_id,
            timeout,
        };
        match Writer::start(spec, t0, Arc::clone(&ctl_load)) {
            Ok(w) => writers.push(w),
            Err(e) => {
                return Err(fail(
                    r,
                    &ctl_load,
                    &mut writers,
                    format!("starting a writer: {e}"),
                ));
            }
        }
    }
    r.event("load started (one writer per site)");
    std::thread::sleep(Duration::from_secs_f64(sb.before_s));
    let acked: usize = writers
        .iter()
        .map(|w| {
            let l = w.log.lock().unwrap_or_else(|p| p.into_inner());
            l.writes.iter().filter(|x| x.ok).count()
        })
        .sum();
    if acked == 0 {
        return Err(fail(
            r,
            &ctl_load,
            &mut writers,
            "no write was acknowledged before the bookmark (check the [[site]] nbd endpoints)"
                .into(),
        ));
    }
    // T.
    let sent_us = us(t0);
    let answer = bookmark(&socket, vol, &name);
    let answered_us = us(t0);
    let time_ns = match answer {
        Ok(t) => t,
        Err(e) => return Err(fail(r, &ctl_load, &mut writers, e)),
    };
    bookmarks.push(name.clone());
    r.events.push(super::Event {
        t_us: sent_us,
        what: format!("bookmark {name} (T) asked at site {}", sb.site),
    });
    r.event(format!(
        "bookmark {name} answered: T = {time_ns} ns site time"
    ));
    std::thread::sleep(Duration::from_secs_f64(sb.after_s));
    // The view.
    let view_bm = if sb.point == ViewPoint::BeforeLoad {
        &start_name
    } else {
        &name
    };
    let view_start_us = r.event(format!(
        "view starts: {} cdp view --bookmark {view_bm} --sandbox",
        prep.twinblk.display()
    ));
    let (view, opened) = View::start(
        &prep.twinblk,
        &prep.dir,
        view_bm,
        &sb.view_nbd,
        cmd_log,
        Duration::from_secs_f64(sb.view_wait_s),
        t0,
    );
    let pid = view.as_ref().map(|v| v.child.id());
    let open_s = opened
        .open_us
        .filter(|_| opened.error.is_none())
        .map(|t| secs(t.saturating_sub(view_start_us)));
    let (vcheck, swrite) = match (&opened.nbd, open_s, &opened.error) {
        (Some((addr, export)), Some(s), None) => {
            r.event(format!("view serves nbd://{addr}/{export} after {s:.3} s"));
            let c = check_view(addr, export, &writers, sent_us, answered_us, timeout);
            r.event(format!(
                "view read: {} of {} blocks, {} mismatches{}",
                c.blocks_checked,
                c.blocks_expected,
                c.mismatches,
                c.error
                    .as_deref()
                    .map(|e| format!(", incomplete: {e}"))
                    .unwrap_or_default()
            ));
            let first = cfg.load.first_block;
            let w = sandbox_write(
                addr,
                export,
                first..first + sb.sandbox_blocks,
                cfg.load.block_size,
                run_id,
                timeout,
            );
            r.event(format!(
                "sandbox: {} of {} blocks written and read back",
                w["read_back"], w["blocks"]
            ));
            (c, w)
        }
        _ => {
            let e = opened
                .error
                .clone()
                .unwrap_or_else(|| "the view did not open".into());
            r.event(format!("the view did not open: {e}"));
            (
                ViewCheck {
                    error: Some(e.clone()),
                    ..Default::default()
                },
                json!({"blocks": sb.sandbox_blocks, "read_back": 0, "ok": false, "error": e}),
            )
        }
    };
    // Discard the view, then the bookmarks.
    let (stopped_ok, exit) = match view {
        Some(v) => v.stop(),
        None => (false, "not started".into()),
    };
    let view_stop_us = r.event(format!("view stopped ({exit})"));
    let hold_released = pid.is_none_or(|pid| {
        let prefix = format!("{pid}-");
        std::fs::read_dir(prep.dir.join("view-holds"))
            .map(|d| {
                !d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            })
            .unwrap_or(true)
    });
    let bm_errors = delete_bookmarks(&socket, vol, &bookmarks);
    r.event(if bm_errors.is_empty() {
        format!("bookmark(s) deleted: {}", bookmarks.join(", "))
    } else {
        bm_errors.join("; ")
    });
    // Production: the load stops; every acknowledged write reads back at both sites.
    let stop_us = r.event("load stops");
    stop_load(&ctl_load, &mut writers);
    let mut readback: Vec<Readback> = Vec::new();
    for (i, s) in cfg.sites.iter().enumerate() {
        let rb = load::check(&s.name, &targets[i].0, &targets[i].1, &writers, timeout);
        r.event(format!(
            "live read-back at {}: {} blocks, {} lost",
            s.name,
            rb.blocks_read,
            rb.lost.len()
        ));
        readback.push(rb);
    }
    let lost: usize = readback.iter().map(|rb| rb.lost.len()).sum();
    let live_complete = readback.iter().all(|rb| rb.complete);
    // Latency: baseline before the bookmark (its first quarter is warm-up), during the view.
    let names: Vec<&str> = cfg.sites.iter().map(|s| s.name.as_str()).collect();
    let (writer_json, all) = load_records(&writers, &names);
    let failed = all.iter().filter(|x| !x.ok).count();
    let warm = load_start_us + (sb.before_s * 0.25 * 1e6) as u64;
    let lat = |from: u64, to: u64| {
        let mut v: Vec<u64> = all
            .iter()
            .filter(|x| x.ok && x.issued_us >= from && x.issued_us < to)
            .map(|x| x.done_us - x.issued_us)
            .collect();
        v.sort_unstable();
        v
    };
    let base = lat(warm, sent_us);
    let during = lat(view_start_us, view_stop_us);
    let (base_p50, during_p50) = (pct(&base, 0.5), pct(&during, 0.5));
    let factor = match (base_p50, during_p50) {
        // Three decimals: a short decimal parses back to the same f64 (the signature is
        // over the numbers as printed).
        (Some(b), Some(d)) if b > 0 => Some((d as f64 / b as f64 * 1e3).round() / 1e3),
        _ => None,
    };
    let (width, series) = latency_series(&all, stop_us);
    // The checks.
    let content_ok = vcheck.complete && vcheck.mismatches == 0 && vcheck.writes_before > 0;
    let mut checks = vec![
        check(
            "view_open",
            format!("<= {} s", sb.max_view_open_s),
            open_s
                .map(|s| format!("{s:.3} s"))
                .unwrap_or_else(|| "not opened".into()),
            open_s.is_some_and(|s| s <= sb.max_view_open_s),
        ),
        check(
            "view_content",
            "0 mismatches, every written block read".into(),
            if let Some(e) = &vcheck.error {
                format!("not checked: {e}")
            } else if vcheck.writes_before == 0 {
                "nothing to check: no write acknowledged before the bookmark".into()
            } else {
                format!(
                    "{} mismatches in {} blocks",
                    vcheck.mismatches, vcheck.blocks_checked
                )
            },
            content_ok,
        ),
        check(
            "sandbox_write",
            format!("{} blocks written and read back", sb.sandbox_blocks),
            match swrite["error"].as_str() {
                Some(e) => format!("failed: {e}"),
                None => format!("{} of {} read back", swrite["read_back"], swrite["blocks"]),
            },
            swrite["ok"] == true,
        ),
        check(
            "production",
            "every acknowledged write reads back at both sites, no failed write".into(),
            format!(
                "{lost} lost, {failed} failed{}",
                if live_complete {
                    ""
                } else {
                    ", read-back incomplete"
                }
            ),
            lost == 0 && failed == 0 && live_complete,
        ),
        check(
            "view_discarded",
            "view stopped, its hold released, bookmarks deleted".into(),
            format!(
                "view {exit}, hold {}, bookmarks {}",
                if hold_released { "released" } else { "LEFT" },
                if bm_errors.is_empty() {
                    "deleted".to_string()
                } else {
                    bm_errors.join("; ")
                }
            ),
            stopped_ok && hold_released && bm_errors.is_empty(),
        ),
    ];
    if let Some(max) = sb.max_latency_factor {
        checks.push(check(
            "latency",
            format!("p50 while the view is open <= {max} x baseline"),
            factor
                .map(|f| format!("{f:.2} x"))
                .unwrap_or_else(|| "not measured".into()),
            factor.is_some_and(|f| f <= max),
        ));
    }
    let report = json!({
        "site": sb.site,
        "dir": prep.dir.display().to_string(),
        "twinblk": prep.twinblk.display().to_string(),
        "cdp_status": prep.status,
        "point": sb.point.as_str(),
        "bookmark": {"name": name, "time_ns": time_ns, "sent_us": sent_us, "answered_us": answered_us,
            "call_ms": (answered_us - sent_us) as f64 / 1e3},
        "view_bookmark": view_bm,
        "ordering_rule": "a write acknowledged before the bookmark call was sent must be in the view (or a newer write of its block sent before the answer); a write sent after the answer must not be; writes in flight across the call may be either",
        "view": {"opened": open_s.is_some(), "open_s": open_s, "started_us": view_start_us,
            "open_us": opened.open_us, "stopped_us": view_stop_us, "pid": pid,
            "nbd": opened.nbd.as_ref().map(|(a, e)| format!("nbd://{a}/{e}")),
            "exit": exit, "stopped_cleanly": stopped_ok, "hold_released": hold_released,
            "error": opened.error},
        "check": vcheck,
        "sandbox_write": swrite,
        "bookmarks_deleted": bm_errors.is_empty(),
        "production": {
            "readback": readback,
            "lost_writes": lost,
            "failed_writes": failed,
            "baseline_p50_us": base_p50, "baseline_p99_us": pct(&base, 0.99),
            "during_view_p50_us": during_p50, "during_view_p99_us": pct(&during, 0.99),
            "during_view_max_us": during.last(),
            "during_view_writes": during.len(),
            "p50_factor": factor,
        },
        "marks_us": {"load_start": load_start_us, "bookmark": sent_us, "view_start": view_start_us,
            "view_open": opened.open_us, "view_stop": view_stop_us, "load_stop": stop_us},
    });
    let load = json!({
        "block_size": cfg.load.block_size,
        "writers": writer_json,
        "baseline_p50_us": base_p50,
        "baseline_p99_us": pct(&base, 0.99),
        "normal_factor": super::NORMAL_LATENCY_FACTOR,
        "series_bucket_us": width,
        "series": series,
    });
    Ok(Part {
        checks,
        report,
        load,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(issued_us: u64, done_us: u64, ok: bool) -> W {
        W {
            issued_us,
            done_us,
            ok,
        }
    }

    #[test]
    fn the_ordering_rule_across_the_bookmark() {
        // Bookmark sent at 100, answered at 110. Seq 0 acknowledged before; seq 1 in flight
        // across the call; seq 2 sent after the answer.
        let m: HashMap<u64, W> = [
            (0, w(10, 20, true)),
            (1, w(95, 130, true)),
            (2, w(140, 150, true)),
        ]
        .into();
        assert_eq!(judge(Some(0), &m, 100, 110), None);
        assert_eq!(judge(Some(1), &m, 100, 110), None, "in flight: either");
        assert!(judge(Some(2), &m, 100, 110).is_some(), "after T");
        assert!(judge(Some(7), &m, 100, 110).is_some(), "never issued");
        assert!(judge(None, &m, 100, 110).is_some(), "seq 0 missing");
        // Nothing acknowledged before: the old content (no stamp) is right, so is the
        // in-flight write; a failed write sent before the answer may have landed.
        let m: HashMap<u64, W> = [(3, w(90, 120, false)), (4, w(120, 125, true))].into();
        assert_eq!(judge(None, &m, 100, 110), None);
        assert_eq!(judge(Some(3), &m, 100, 110), None);
        assert!(judge(Some(4), &m, 100, 110).is_some());
        // An older write than the one acknowledged before.
        let m: HashMap<u64, W> = [(5, w(1, 2, true)), (6, w(3, 4, true))].into();
        assert!(judge(Some(5), &m, 100, 110).is_some());
        assert_eq!(judge(Some(6), &m, 100, 110), None);
    }

    #[test]
    fn the_sandbox_pattern_is_never_a_load_stamp() {
        let p = sandbox_pattern(4096, 7, 3);
        assert_eq!(load::parse_stamp(&p, 7, 0, 3), None);
        assert_ne!(p, sandbox_pattern(4096, 7, 4));
        assert_eq!(p.len(), 4096);
    }
}
