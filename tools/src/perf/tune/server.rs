//! What `twinperf tune` reads from and sets on the target through its control socket: the
//! reactors and their wait policies (`reactor_stats`, `reactor_set_wait`), and the server's CPU
//! time.
//!
//! Model: a [`Sample`] is taken when a point's measurement starts and when it ends; the
//! difference gives the server's I/Os, which reactors carried them, and its CPU time, from one
//! of two sources ([`CpuSource`]): the daemon process's own threads in `/proc` (its pid is the
//! control socket's peer, `SO_PEERCRED`, so only when the daemon runs on this machine and
//! `/proc/PID` is readable), else the reactors' published times (on the CPU = busy + idle -
//! asleep in the ring: the reactor threads only).
//!
//! Invariants: [`Control::restore`] puts back, reactor by reactor, the policy each ran when
//! tune started; [`Restorer`] does it on drop (an error or a panic unwinding), so a sweep that
//! changed a policy never leaves it changed unless the daemon stops answering.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// A wait policy as the control socket names it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Wait {
    /// `poll`, `adaptive` or `interrupt`.
    pub wait: String,
    /// Adaptive's spin (None for the others).
    pub spin_us: Option<u64>,
}

impl std::fmt::Display for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.spin_us {
            Some(s) => write!(f, "{} (spin {s} µs)", self.wait),
            None => f.write_str(&self.wait),
        }
    }
}

/// One reactor as `reactor_stats` shows it.
#[derive(Clone, Debug, Default)]
pub struct ReactorSample {
    /// Its core.
    pub core: Option<u64>,
    /// Block I/Os started by front ends.
    pub ios: u64,
    /// ns in turns that did work.
    pub busy_ns: u64,
    /// ns in turns that did none.
    pub idle_ns: u64,
    /// ns blocked in the ring (None: the daemon does not publish it).
    pub sleep_ns: Option<u64>,
    /// Its running wait policy (None: the daemon does not publish it).
    pub wait: Option<Wait>,
}

/// The server at one moment.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Per reactor.
    pub reactors: Vec<ReactorSample>,
    /// The daemon process's CPU time in ns (None: not readable).
    pub proc_cpu_ns: Option<u64>,
}

/// Where the server's CPU figure comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CpuSource {
    /// The daemon's threads in /proc (the whole process).
    Proc,
    /// The reactors' own time on the CPU, from `reactor_stats` (reactor threads only).
    ReactorStats,
    /// Busy time only (an older daemon without `sleep_ns`): a lower bound.
    ReactorBusy,
}

/// What changed between two samples.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Delta {
    /// I/Os the server started.
    pub ios: u64,
    /// Reactors whose I/O count grew.
    pub reactors_used: u32,
    /// CPU ns from the chosen source.
    pub cpu_ns: Option<u64>,
    /// The reactors' CPU ns (busy + idle - sleep, or busy only).
    pub reactor_cpu_ns: u64,
}

impl Sample {
    /// From `before` to `self`, CPU from `source`.
    pub fn since(&self, before: &Sample, source: CpuSource) -> Delta {
        let mut d = Delta::default();
        for (a, b) in self.reactors.iter().zip(&before.reactors) {
            let ios = a.ios.saturating_sub(b.ios);
            d.ios += ios;
            d.reactors_used += u32::from(ios > 0);
            let busy = a.busy_ns.saturating_sub(b.busy_ns);
            d.reactor_cpu_ns += match (a.sleep_ns, b.sleep_ns) {
                (Some(sa), Some(sb)) => (busy + a.idle_ns.saturating_sub(b.idle_ns))
                    .saturating_sub(sa.saturating_sub(sb)),
                _ => busy,
            };
        }
        d.cpu_ns = match source {
            CpuSource::Proc => match (self.proc_cpu_ns, before.proc_cpu_ns) {
                (Some(a), Some(b)) => Some(a.saturating_sub(b)),
                _ => None,
            },
            _ => Some(d.reactor_cpu_ns),
        };
        d
    }
}

/// The daemon's control socket.
pub struct Control {
    path: PathBuf,
    /// The daemon's pid, when its /proc entry is readable.
    pub pid: Option<i32>,
}

fn num(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

impl Control {
    /// Connect once to learn the daemon's pid and check it answers.
    pub fn open(path: &Path) -> Result<Control> {
        let s = UnixStream::connect(path)
            .with_context(|| format!("cannot reach the control socket {}", path.display()))?;
        let pid = peer_pid(&s).filter(|p| proc_cpu_ns(*p).is_some());
        drop(s);
        let c = Control {
            path: path.to_path_buf(),
            pid,
        };
        c.call("daemon_info", Value::Null)?;
        Ok(c)
    }

    /// One method; its result.
    pub fn call(&self, method: &str, params: Value) -> Result<Value> {
        crate::ctl::call(&self.path, method, params).map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// `daemon_info`.
    pub fn info(&self) -> Result<Value> {
        self.call("daemon_info", Value::Null)
    }

    /// Read the reactors (and the process's CPU time).
    pub fn sample(&self) -> Result<Sample> {
        let proc_cpu_ns = self.pid.and_then(proc_cpu_ns);
        let v = self.call("reactor_stats", Value::Null)?;
        let Some(rs) = v.as_array() else {
            bail!("reactor_stats answered something that is not a list: {v}");
        };
        let reactors = rs
            .iter()
            .map(|r| ReactorSample {
                core: r.get("core").and_then(Value::as_u64),
                ios: num(r, "ios"),
                busy_ns: num(r, "busy_ns"),
                idle_ns: num(r, "idle_ns"),
                sleep_ns: r.get("sleep_ns").and_then(Value::as_u64),
                wait: r.get("wait").and_then(Value::as_str).map(|w| Wait {
                    wait: w.to_string(),
                    spin_us: r.get("spin_us").and_then(Value::as_u64),
                }),
            })
            .collect();
        Ok(Sample {
            reactors,
            proc_cpu_ns,
        })
    }

    /// Every reactor to `wait` (adaptive: the daemon's configured spin unless `spin_us`).
    pub fn set_wait(&self, wait: &str, spin_us: Option<u64>, reactor: Option<usize>) -> Result<()> {
        let mut p = json!({"wait": wait});
        if let Some(s) = spin_us {
            p["spin_us"] = json!(s);
        }
        if let Some(r) = reactor {
            p["reactor"] = json!(r);
        }
        let v = self.call("reactor_set_wait", p)?;
        let applied = v["reactors"]
            .as_array()
            .is_some_and(|a| a.iter().all(|r| r["applied"] == true));
        if !applied {
            bail!("the daemon did not apply wait={wait} on every reactor: {v}");
        }
        Ok(())
    }

    /// Put back the policy each reactor ran (`found[i]` for reactor i; None: leave it).
    pub fn restore(&self, found: &[Option<Wait>]) -> Result<()> {
        for (i, w) in found.iter().enumerate() {
            if let Some(w) = w {
                self.set_wait(&w.wait, w.spin_us, Some(i))
                    .with_context(|| format!("restoring reactor {i} to {w}"))?;
            }
        }
        Ok(())
    }
}

/// Restores the wait policies found at the start when dropped, unless [`Restorer::done`] ran.
pub struct Restorer<'a> {
    /// The control socket.
    pub control: &'a Control,
    /// Per reactor, the policy found.
    pub found: Vec<Option<Wait>>,
    /// A policy was changed since the start (or the last restore).
    pub changed: bool,
}

impl Restorer<'_> {
    /// Restore now (if anything changed); the result.
    pub fn done(&mut self) -> Result<()> {
        if !self.changed {
            return Ok(());
        }
        let r = self.control.restore(&self.found);
        if r.is_ok() {
            self.changed = false;
        }
        r
    }
}

impl Drop for Restorer<'_> {
    fn drop(&mut self) {
        if self.changed
            && let Err(e) = self.control.restore(&self.found)
        {
            eprintln!("twinperf tune: could not restore the wait policy: {e:#}");
        }
    }
}

/// The pid of the process at the other end of a unix socket (None: unknown, e.g. another pid
/// namespace).
fn peer_pid(s: &UnixStream) -> Option<i32> {
    // SAFETY: an all-zero ucred is a valid value of this plain C struct.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given for the call's duration.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0 && cred.pid > 0).then_some(cred.pid)
}

/// CPU time of every thread of `pid`, ns: the sum of `/proc/PID/task/*/schedstat`'s first
/// field (ns on the CPU). None when unreadable.
pub fn proc_cpu_ns(pid: i32) -> Option<u64> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    let mut any = false;
    for e in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path().join("schedstat")) else {
            continue;
        };
        if let Some(ns) = text
            .split_whitespace()
            .next()
            .and_then(|f| f.parse::<u64>().ok())
        {
            total = total.saturating_add(ns);
            any = true;
        }
    }
    any.then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(ios: u64, busy: u64, idle: u64, sleep: Option<u64>) -> ReactorSample {
        ReactorSample {
            ios,
            busy_ns: busy,
            idle_ns: idle,
            sleep_ns: sleep,
            ..Default::default()
        }
    }

    #[test]
    fn a_delta_counts_the_reactors_that_carried_io_and_their_time_awake() {
        let a = Sample {
            reactors: vec![r(10, 100, 100, Some(50)), r(5, 10, 10, Some(5))],
            proc_cpu_ns: Some(1000),
        };
        let b = Sample {
            reactors: vec![r(110, 300, 400, Some(250)), r(5, 20, 900, Some(800))],
            proc_cpu_ns: Some(5000),
        };
        let d = b.since(&a, CpuSource::ReactorStats);
        assert_eq!(d.ios, 100);
        assert_eq!(d.reactors_used, 1);
        // r0: 200 busy + 300 idle - 200 asleep; r1: 10 + 890 - 795.
        assert_eq!(d.reactor_cpu_ns, 300 + 105);
        assert_eq!(d.cpu_ns, Some(405));
        assert_eq!(b.since(&a, CpuSource::Proc).cpu_ns, Some(4000));
        // Without sleep_ns: busy only.
        let old = |s: &Sample| Sample {
            reactors: s
                .reactors
                .iter()
                .map(|x| ReactorSample {
                    sleep_ns: None,
                    ..x.clone()
                })
                .collect(),
            proc_cpu_ns: None,
        };
        let d = old(&b).since(&old(&a), CpuSource::ReactorBusy);
        assert_eq!(d.reactor_cpu_ns, 210);
        assert_eq!(old(&b).since(&old(&a), CpuSource::Proc).cpu_ns, None);
    }

    #[test]
    fn this_process_cpu_is_readable_and_grows() {
        let pid = std::process::id() as i32;
        let a = proc_cpu_ns(pid).expect("/proc/self readable");
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let b = proc_cpu_ns(pid).unwrap();
        assert!(b > a, "{a} -> {b}");
        assert_eq!(proc_cpu_ns(-1), None);
    }
}
