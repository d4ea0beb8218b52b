//! `twinperf tune`: sweep the target's wait policy, the queue count (and with it how many
//! reactors carry the load) and the queue depth, and recommend a configuration with the
//! measured reason.
//!
//! Model: a grid of points, wait policy (outermost; set on every reactor through the control
//! socket's `reactor_set_wait`) x queues x depth. Each point is one ordinary twinperf run
//! ([`super::run_observed`]) of `queues` connections at `depth`, a warm-up (not measured)
//! then a measured window; the server is sampled ([`server::Sample`]) when the measured window
//! starts and after the run, for its I/O count, the reactors that carried I/O and its CPU
//! time. The time budget is shared out as the sweep goes: each point gets what is left divided
//! by the points left, less the connection set-up time seen so far. The rule that picks the
//! recommendation is in [`rule`].
//!
//! Reactor cores cannot move at run time, and twinblk deals connections to its reactors
//! round-robin (the accepting reactor 0 picks the next one), so no client can choose which
//! reactor serves it: the "cores" dimension is swept through the queue count (N queues on
//! min(N, reactors) reactors), and the reactors that carried I/O are measured, not assumed.
//!
//! Invariants:
//! - The wait policy each reactor ran at the start is put back at the end, after an error,
//!   and after Ctrl-C (the sweep stops after the point under way) ([`server::Restorer`]).
//! - The recommendation is one of the measured points; every figure printed was measured in
//!   this run (a figure that could not be measured is shown as `-` / null, never guessed).

pub mod rule;
pub mod server;

use super::{Opts, Proto, Rw, Stop};
use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;
use server::{Control, CpuSource, Restorer, Wait};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Shortest measured window of a point.
pub const MIN_MEASURE: Duration = Duration::from_millis(200);
/// Shortest warm-up of a point.
pub const MIN_WARMUP: Duration = Duration::from_millis(50);
/// Longest warm-up of a point.
pub const MAX_WARMUP: Duration = Duration::from_secs(1);
/// Budget a point needs at least (warm-up, measurement, connecting).
pub const MIN_POINT: Duration = Duration::from_millis(300);
/// The wait policies swept by default.
pub const WAITS: [&str; 3] = ["poll", "adaptive", "interrupt"];
/// The depths swept by default.
pub const DEPTHS: [u32; 4] = [1, 8, 32, 128];

/// What to sweep, and how.
#[derive(Clone, Debug)]
pub struct TuneOpts {
    /// Target, pattern, block size and the other run options (`conns`, `qd`, `stop`,
    /// `warmup` are set per point).
    pub base: Opts,
    /// The target's control socket (None: nothing on the server side is swept or measured).
    pub control: Option<PathBuf>,
    /// The whole sweep's time.
    pub budget: Duration,
    /// Wait policies (None: [`WAITS`] with a control socket).
    pub waits: Option<Vec<String>>,
    /// Queue counts (None: 1, 2, 4 ... up to twice the reactors; 1, 2, 4 without a socket).
    pub queues: Option<Vec<u32>>,
    /// Depths (None: [`DEPTHS`]).
    pub depths: Option<Vec<u32>>,
    /// Set by Ctrl-C: stop after the point under way.
    pub interrupted: Arc<AtomicBool>,
}

/// One measured point.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    /// Wait policy (None: not steered, whatever the target runs).
    pub wait: Option<String>,
    /// Connections (NVMe: I/O queues).
    pub queues: u32,
    /// Requests in flight per queue.
    pub depth: u32,
    /// Reactors whose I/O count grew during the measurement (None: no control socket).
    pub reactors_used: Option<u32>,
    /// Measured seconds (after the warm-up).
    pub seconds: f64,
    /// Warm-up seconds.
    pub warmup_s: f64,
    /// I/Os completed in the measured window (client side).
    pub ios: u64,
    /// I/Os the server started in the measured window (None: no control socket).
    pub server_ios: Option<u64>,
    /// I/Os the target failed (warm-up included).
    pub errors: u64,
    /// I/Os per second.
    pub iops: f64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th percentile latency, µs.
    pub p99_us: f64,
    /// Server CPU µs per I/O, from `cpu_source` (None: not measured).
    pub cpu_us_per_io: Option<f64>,
    /// The reactor threads' CPU µs per I/O from `reactor_stats` (None: no control socket).
    pub reactor_cpu_us_per_io: Option<f64>,
}

/// The grid swept.
#[derive(Clone, Debug, Serialize)]
pub struct Grid {
    /// Wait policies (empty: not swept).
    pub waits: Vec<String>,
    /// Queue counts.
    pub queues: Vec<u32>,
    /// Depths.
    pub depths: Vec<u32>,
}

/// The recommendation with its point.
#[derive(Clone, Debug, Serialize)]
pub struct Recommended {
    /// The point.
    pub point: Point,
    /// The rule's answer.
    #[serde(flatten)]
    pub rule: rule::Recommendation,
    /// What to change on the server, and what needs a restart.
    pub config_note: String,
}

/// The whole sweep.
#[derive(Clone, Debug, Serialize)]
pub struct TuneReport {
    /// `"twinperf"`.
    pub tool: &'static str,
    /// `"tune"`.
    pub mode: &'static str,
    /// twinperf's version.
    pub version: &'static str,
    /// Protocol.
    pub proto: Proto,
    /// Target address.
    pub addr: String,
    /// Export, NQN or IQN.
    pub name: String,
    /// Pattern.
    pub rw: Rw,
    /// Bytes per I/O.
    pub bs: u32,
    /// The budget, s.
    pub budget_s: f64,
    /// What the sweep took, s.
    pub elapsed_s: f64,
    /// The control socket.
    pub control: Option<String>,
    /// The daemon's pid (when local and readable).
    pub server_pid: Option<i32>,
    /// Reactors of the target (None: no control socket).
    pub reactors: Option<usize>,
    /// Their cores.
    pub cores: Vec<Option<u64>>,
    /// Per reactor, the wait policy found at the start.
    pub wait_found: Vec<Option<Wait>>,
    /// Where the server CPU figures come from (None: not measured).
    pub cpu_source: Option<CpuSource>,
    /// The same in words.
    pub cpu_note: String,
    /// How the cores dimension was swept, in words.
    pub cores_note: String,
    /// The grid.
    pub grid: Grid,
    /// Every point measured, in sweep order.
    pub points: Vec<Point>,
    /// False when Ctrl-C stopped the sweep early.
    pub complete: bool,
    /// The recommendation (None: no usable point).
    pub recommendation: Option<Recommended>,
    /// The wait policy found was put back and read back as such (None: nothing was changed).
    pub restored: Option<bool>,
}

fn powers_up_to(max: u32) -> Vec<u32> {
    let mut v = vec![1];
    while let Some(&l) = v.last() {
        if l * 2 > max {
            break;
        }
        v.push(l * 2);
    }
    v
}

/// The common wait of every reactor, as the sweep sets adaptive (the spin found, when every
/// reactor ran adaptive with the same one; else the daemon's configured spin).
fn adaptive_spin(found: &[Option<Wait>]) -> Option<u64> {
    let first = found.first()?.as_ref()?;
    (first.wait == "adaptive" && found.iter().all(|w| w.as_ref() == Some(first)))
        .then_some(first.spin_us)
        .flatten()
}

/// Run the sweep.
pub fn tune(o: &TuneOpts) -> Result<TuneReport> {
    let t0 = Instant::now();
    let control = o.control.as_deref().map(Control::open).transpose()?;
    let mut report = TuneReport {
        tool: "twinperf",
        mode: "tune",
        version: env!("CARGO_PKG_VERSION"),
        proto: o.base.target.proto,
        addr: o.base.target.addr.to_string(),
        name: o.base.target.name.clone(),
        rw: o.base.rw,
        bs: o.base.bs,
        budget_s: o.budget.as_secs_f64(),
        elapsed_s: 0.0,
        control: o.control.as_ref().map(|p| p.display().to_string()),
        server_pid: control.as_ref().and_then(|c| c.pid),
        reactors: None,
        cores: Vec::new(),
        wait_found: Vec::new(),
        cpu_source: None,
        cpu_note: "not measured: no --control socket".into(),
        cores_note: "not swept: without --control the target's reactors cannot be seen; \
                     the queue counts ran on whatever reactors the target gave them"
            .into(),
        grid: Grid {
            waits: Vec::new(),
            queues: Vec::new(),
            depths: o.depths.clone().unwrap_or(DEPTHS.to_vec()),
        },
        points: Vec::new(),
        complete: false,
        recommendation: None,
        restored: None,
    };
    let mut max_queues = 4;
    if let Some(c) = &control {
        let s0 = c.sample()?;
        ensure!(!s0.reactors.is_empty(), "the daemon reports no reactor");
        let n = s0.reactors.len();
        max_queues = (2 * n as u32).max(1);
        report.reactors = Some(n);
        report.cores = s0.reactors.iter().map(|r| r.core).collect();
        report.wait_found = s0.reactors.iter().map(|r| r.wait.clone()).collect();
        let info = c.info()?;
        let port = o.base.target.addr.port();
        let listens_there = info["listeners"].as_array().is_some_and(|ls| {
            ls.iter().any(|l| {
                l["addr"]
                    .as_str()
                    .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
                    .is_some_and(|a| a.port() == port)
            })
        });
        ensure!(
            listens_there,
            "the daemon at {} has no listener on port {port}: is it the target's control socket?",
            c_path(o)
        );
        let sleep_known = s0.reactors.iter().all(|r| r.sleep_ns.is_some());
        let (src, note) = match (c.pid, sleep_known) {
            (Some(pid), _) => (
                CpuSource::Proc,
                format!(
                    "the whole twinblk process (pid {pid}, the control socket's peer): \
                     /proc/{pid}/task/*/schedstat"
                ),
            ),
            (None, true) => (
                CpuSource::ReactorStats,
                "the reactor threads only, from reactor_stats (busy + idle - asleep in the \
                 ring): the daemon's /proc entry is not readable from here"
                    .to_string(),
            ),
            (None, false) => (
                CpuSource::ReactorBusy,
                "the reactors' busy time from reactor_stats (a lower bound: this daemon \
                 publishes no sleep_ns, so spinning is not counted)"
                    .to_string(),
            ),
        };
        report.cpu_source = Some(src);
        report.cpu_note = note;
        report.cores_note = format!(
            "the target runs {n} reactor(s) (cores {}); it deals connections to them \
             round-robin and cannot be told which reactor takes one, so the cores dimension \
             is swept through the queue count (N queues on up to min(N, {n}) reactors) and \
             the reactors column is measured (reactors whose I/O count grew); changing \
             [reactor] cores needs a restart",
            report
                .cores
                .iter()
                .map(|c| c.map_or("?".into(), |c| c.to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if report.wait_found.iter().all(Option::is_some) {
            report.grid.waits = o
                .waits
                .clone()
                .unwrap_or(WAITS.iter().map(|s| s.to_string()).collect());
        } else if o.waits.is_some() {
            bail!("this daemon does not report its reactors' wait policy: it cannot be swept");
        }
    } else if o.waits.is_some() {
        bail!("--waits needs --control (the wait policy is set through the control socket)");
    }
    report.grid.queues = o.queues.clone().unwrap_or(powers_up_to(max_queues));
    for w in &report.grid.waits {
        ensure!(
            WAITS.contains(&w.as_str()),
            "unknown wait policy {w:?} (poll, adaptive, interrupt)"
        );
    }
    ensure!(
        !report.grid.queues.is_empty()
            && report.grid.queues.iter().all(|&q| (1..=1024).contains(&q)),
        "queue counts must be 1..=1024"
    );
    ensure!(
        !report.grid.depths.is_empty()
            && report
                .grid
                .depths
                .iter()
                .all(|&d| (1..=super::MAX_QD).contains(&d)),
        "depths must be 1..={}",
        super::MAX_QD
    );
    let waits: Vec<Option<String>> = if report.grid.waits.is_empty() {
        vec![None]
    } else {
        report.grid.waits.iter().cloned().map(Some).collect()
    };
    let total = waits.len() * report.grid.queues.len() * report.grid.depths.len();
    let need = MIN_POINT.as_secs_f64() * total as f64;
    ensure!(
        o.budget.as_secs_f64() >= need,
        "--budget {:.1} s is too short for {total} points (each needs at least {:.1} s): give \
         --budget {:.0} or more, or fewer points (--waits, --queues, --depths)",
        o.budget.as_secs_f64(),
        MIN_POINT.as_secs_f64(),
        need.ceil()
    );
    let spin = adaptive_spin(&report.wait_found);
    let mut guard = control.as_ref().map(|c| Restorer {
        control: c,
        found: report.wait_found.clone(),
        changed: false,
    });
    let mut overhead = Duration::from_millis(50);
    let mut done = 0usize;
    'sweep: for wait in &waits {
        if let (Some(w), Some(g)) = (wait, guard.as_mut()) {
            if o.interrupted.load(Ordering::SeqCst) {
                break 'sweep;
            }
            g.changed = true;
            g.control
                .set_wait(w, if w == "adaptive" { spin } else { None }, None)?;
        }
        for &queues in &report.grid.queues {
            for &depth in &report.grid.depths {
                if o.interrupted.load(Ordering::SeqCst) {
                    break 'sweep;
                }
                let left = (total - done) as u32;
                let remaining = o.budget.saturating_sub(t0.elapsed());
                let run = (remaining / left)
                    .saturating_sub(overhead)
                    .max(MIN_MEASURE + MIN_WARMUP);
                let warmup = (run / 4).clamp(MIN_WARMUP, MAX_WARMUP);
                let started = Instant::now();
                let p = point(
                    o,
                    control.as_ref(),
                    report.cpu_source,
                    wait,
                    queues,
                    depth,
                    run,
                    warmup,
                )
                .with_context(|| {
                    format!(
                        "point {}",
                        rule::label(&rule::Measured {
                            wait: wait.clone().unwrap_or("-".into()),
                            queues,
                            depth,
                            iops: 0.0,
                            p99_us: 0.0,
                            cpu_us_per_io: None,
                            errors: 0,
                        })
                    )
                })?;
                // Set-up and teardown time of this point, for the next points' share.
                overhead = started.elapsed().saturating_sub(run);
                report.points.push(p);
                done += 1;
            }
        }
    }
    report.complete = done == total;
    if let Some(g) = guard.as_mut() {
        let changed = g.changed;
        g.done()?;
        if changed {
            let back: Vec<_> = control
                .as_ref()
                .map(|c| c.sample())
                .transpose()?
                .map(|s| s.reactors.into_iter().map(|r| r.wait).collect())
                .unwrap_or_default();
            report.restored = Some(back == report.wait_found);
        }
    }
    let measured: Vec<rule::Measured> = report
        .points
        .iter()
        .map(|p| rule::Measured {
            wait: p.wait.clone().unwrap_or("unchanged".into()),
            queues: p.queues,
            depth: p.depth,
            iops: p.iops,
            p99_us: p99_or_nan(p),
            cpu_us_per_io: p.cpu_us_per_io,
            errors: p.errors,
        })
        .collect();
    report.recommendation = rule::recommend(&measured).map(|r| {
        let point = report.points[r.index].clone();
        let config_note = config_note(&report, &point);
        Recommended {
            point,
            rule: r,
            config_note,
        }
    });
    report.elapsed_s = t0.elapsed().as_secs_f64();
    Ok(report)
}

fn c_path(o: &TuneOpts) -> String {
    o.control
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn p99_or_nan(p: &Point) -> f64 {
    if p.ios > 0 { p.p99_us } else { f64::NAN }
}

/// What to configure for the recommended point.
fn config_note(r: &TuneReport, p: &Point) -> String {
    let mut s = String::new();
    match &p.wait {
        Some(w) => s.push_str(&format!(
            "server: [reactor] wait = \"{w}\" (at run time: reactor_set_wait {{\"wait\": \"{w}\"}}; \
             this sweep put the policy it found back)"
        )),
        None => s.push_str("server: wait policy not swept"),
    }
    s.push_str(&format!(
        "; hosts: {} queue(s)/connection(s) at depth {}",
        p.queues, p.depth
    ));
    if let (Some(n), Some(used)) = (r.reactors, p.reactors_used) {
        if (used as usize) < n {
            s.push_str(&format!(
                "; {used} of the {n} reactors carried this load: [reactor] cores with {used} \
                 core(s) would serve it and free the rest (a restart; not measured here with \
                 fewer reactors running)"
            ));
        } else {
            s.push_str(&format!(
                "; all {n} reactors carried this load ([reactor] cores changes only with a restart)"
            ));
        }
    }
    s
}

#[allow(clippy::too_many_arguments)]
fn point(
    o: &TuneOpts,
    control: Option<&Control>,
    source: Option<CpuSource>,
    wait: &Option<String>,
    queues: u32,
    depth: u32,
    run: Duration,
    warmup: Duration,
) -> Result<Point> {
    let opts = Opts {
        conns: queues,
        qd: depth,
        threads: 1,
        stop: Stop::Time(run),
        warmup,
        verify: false,
        verify_state: None,
        rate: None,
        ..o.base.clone()
    };
    let mut before = None;
    let report = super::run_observed(&opts, &mut || {
        before = control.map(|c| c.sample());
    })?;
    let delta = match (control, before, source) {
        (Some(c), Some(b), Some(src)) => {
            let b = b?;
            let a = c.sample()?;
            Some(a.since(&b, src))
        }
        _ => None,
    };
    let per_io = |ns: Option<u64>, ios: u64| {
        ns.filter(|_| ios > 0)
            .map(|ns| ns as f64 / 1000.0 / ios as f64)
    };
    let server_ios = delta.as_ref().map(|d| d.ios);
    let ios_for_cpu = server_ios.filter(|&n| n > 0).unwrap_or(report.ios);
    Ok(Point {
        wait: wait.clone(),
        queues,
        depth,
        reactors_used: delta.as_ref().map(|d| d.reactors_used),
        seconds: report.seconds,
        warmup_s: report.warmup_s,
        ios: report.ios,
        server_ios,
        errors: report.errors,
        iops: report.iops,
        p50_us: report.latency_us.p50,
        p99_us: report.latency_us.p99,
        cpu_us_per_io: per_io(delta.as_ref().and_then(|d| d.cpu_ns), ios_for_cpu),
        reactor_cpu_us_per_io: per_io(delta.as_ref().map(|d| d.reactor_cpu_ns), ios_for_cpu),
    })
}

impl std::fmt::Display for TuneReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "twinperf tune {:?} {} {}: {:?} bs {}, {} point(s) in {:.1} s (budget {:.0} s){}",
            self.proto,
            self.addr,
            self.name,
            self.rw,
            self.bs,
            self.points.len(),
            self.elapsed_s,
            self.budget_s,
            if self.complete {
                ""
            } else {
                " -- INTERRUPTED, the sweep is incomplete"
            }
        )?;
        if let Some(n) = self.reactors {
            let found: Vec<String> = self
                .wait_found
                .iter()
                .map(|w| w.as_ref().map_or("?".into(), |w| w.to_string()))
                .collect();
            writeln!(
                f,
                "server: {n} reactor(s), wait found: {}",
                found.join(", ")
            )?;
        }
        writeln!(f, "server CPU per I/O: {}", self.cpu_note)?;
        writeln!(f, "cores: {}", self.cores_note)?;
        writeln!(
            f,
            "{:<10} {:>6} {:>5} {:>8} {:>10} {:>9} {:>9} {:>11}",
            "wait", "queues", "depth", "reactors", "IOPS", "p50 µs", "p99 µs", "cpu µs/I/O"
        )?;
        let rec = self.recommendation.as_ref().map(|r| r.rule.index);
        for (i, p) in self.points.iter().enumerate() {
            writeln!(
                f,
                "{:<10} {:>6} {:>5} {:>8} {:>10.0} {:>9.1} {:>9.1} {:>11}{}{}",
                p.wait.as_deref().unwrap_or("-"),
                p.queues,
                p.depth,
                match (p.reactors_used, self.reactors) {
                    (Some(u), Some(n)) => format!("{u}/{n}"),
                    _ => "-".into(),
                },
                p.iops,
                p.p50_us,
                p.p99_us,
                p.cpu_us_per_io.map_or("-".into(), |c| format!("{c:.2}")),
                if p.errors > 0 {
                    format!("  {} errors", p.errors)
                } else {
                    String::new()
                },
                if rec == Some(i) {
                    "  <- recommended"
                } else {
                    ""
                }
            )?;
        }
        match &self.recommendation {
            Some(r) => {
                writeln!(f, "recommendation: {}", r.rule.reason)?;
                writeln!(f, "  {}", r.config_note)?;
            }
            None => writeln!(
                f,
                "recommendation: none (no point completed without errors)"
            )?,
        }
        write!(
            f,
            "{}",
            match self.restored {
                None => "wait policy: not changed",
                Some(true) => "wait policy: restored to what was found (read back)",
                Some(false) => "wait policy: NOT restored as found (see reactor_stats)",
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_counts_go_by_powers_of_two_up_to_twice_the_reactors() {
        assert_eq!(powers_up_to(1), vec![1]);
        assert_eq!(powers_up_to(4), vec![1, 2, 4]);
        assert_eq!(powers_up_to(6), vec![1, 2, 4]);
        assert_eq!(powers_up_to(16), vec![1, 2, 4, 8, 16]);
    }

    #[test]
    fn adaptive_keeps_the_spin_found_only_when_every_reactor_agrees() {
        let a = |s| {
            Some(Wait {
                wait: "adaptive".into(),
                spin_us: Some(s),
            })
        };
        assert_eq!(adaptive_spin(&[a(20), a(20)]), Some(20));
        assert_eq!(adaptive_spin(&[a(20), a(30)]), None);
        let poll = Some(Wait {
            wait: "poll".into(),
            spin_us: None,
        });
        assert_eq!(adaptive_spin(&[poll, a(20)]), None);
        assert_eq!(adaptive_spin(&[]), None);
    }
}
