//! What a run measured: totals, latency percentiles, the per-second timeline, verification and
//! the client's own CPU, as text for people and JSON for scripts (schema: `docs/twinperf.md`).
//!
//! Latencies are recorded in nanoseconds in HDR histograms (3 significant digits for the whole
//! run, 2 for each second) and reported in microseconds. A second of the timeline holds the
//! I/Os that completed in it; the last one may be partial and its IOPS is scaled to its length.

use super::engine::{Second, ThreadOut};
use super::verify::Mismatch;
use super::{Opts, Proto, Rw, Stop};
use hdrhistogram::Histogram;
use std::time::{Duration, Instant};

/// Latency summary in µs.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Lat {
    /// Smallest.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p99_9: f64,
    /// Largest.
    pub max: f64,
}

impl Lat {
    fn of(h: &Histogram<u64>) -> Option<Lat> {
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Some(Lat {
            min: us(h.min()),
            mean: h.mean() / 1000.0,
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p99_9: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        })
    }
}

/// Verification outcome.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct VerifyOut {
    /// `--verify` was on.
    pub enabled: bool,
    /// Run id stamped in written sectors.
    pub run_id: u64,
    /// Reads whose data was compared (units this run, or its state file, wrote).
    pub checked_reads: u64,
    /// Reads that did not match.
    pub mismatches: u64,
    /// The first mismatches (at most 16).
    pub first_mismatches: Vec<Mismatch>,
}

/// CPU used by twinperf itself during the measured run (all threads).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Cpu {
    /// User seconds.
    pub user_s: f64,
    /// System seconds.
    pub sys_s: f64,
    /// (user + system) µs per completed I/O.
    pub us_per_io: f64,
}

/// One second of the timeline.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Point {
    /// End of this interval, seconds since the start.
    pub t: f64,
    /// I/Os completed in it.
    pub ios: u64,
    /// I/Os per second over it.
    pub iops: f64,
    /// Median latency µs (0 without I/O).
    pub p50_us: f64,
    /// 99th percentile µs.
    pub p99_us: f64,
    /// Largest µs.
    pub max_us: f64,
}

/// The whole report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// "twinperf".
    pub tool: &'static str,
    /// twinperf's version.
    pub version: &'static str,
    /// Protocol.
    pub proto: Proto,
    /// Target address.
    pub addr: String,
    /// Export / NQN / IQN.
    pub name: String,
    /// Pattern.
    pub rw: Rw,
    /// Percent of reads asked for.
    pub rwmix_read: u8,
    /// Bytes per I/O.
    pub bs: u32,
    /// Queue depth per connection.
    pub qd: u32,
    /// Connections.
    pub conns: u32,
    /// Threads.
    pub threads: u32,
    /// First byte of the region.
    pub region_offset: u64,
    /// Bytes of the region.
    pub region_bytes: u64,
    /// IOPS cap (null: none).
    pub rate_limit: Option<u64>,
    /// I/Os asked for (null: a timed run).
    pub ios_requested: Option<u64>,
    /// Seconds asked for (null: an I/O-count run).
    pub seconds_requested: Option<f64>,
    /// Seconds of warm-up at the start of the run, not measured (part of `seconds_requested`).
    pub warmup_s: f64,
    /// Seconds from the start (after the warm-up) to the last completion.
    pub seconds: f64,
    /// I/Os completed (errors included).
    pub ios: u64,
    /// Reads completed.
    pub reads: u64,
    /// Writes completed.
    pub writes: u64,
    /// Bytes moved by successful I/Os.
    pub bytes: u64,
    /// I/Os the target answered with an error.
    pub errors: u64,
    /// `ios / seconds`.
    pub iops: f64,
    /// MiB/s of successful I/O.
    pub mib_per_s: f64,
    /// All latencies.
    pub latency_us: Lat,
    /// Reads only (null without reads).
    pub read_latency_us: Option<Lat>,
    /// Writes only (null without writes).
    pub write_latency_us: Option<Lat>,
    /// Verification.
    pub verify: VerifyOut,
    /// twinperf's own CPU.
    pub cpu: Cpu,
    /// Per second.
    pub timeline: Vec<Point>,
}

/// A process CPU sample.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuSample {
    user: Duration,
    sys: Duration,
}

impl CpuSample {
    /// CPU between `earlier` and this sample.
    pub fn since(&self, earlier: &CpuSample) -> CpuSample {
        CpuSample {
            user: self.user.saturating_sub(earlier.user),
            sys: self.sys.saturating_sub(earlier.sys),
        }
    }
}

/// This process's user and system CPU so far (`getrusage(RUSAGE_SELF)`; zero if it fails).
pub fn cpu_now() -> CpuSample {
    // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage for the call's duration.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return CpuSample::default();
    }
    let d = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    CpuSample {
        user: d(ru.ru_utime),
        sys: d(ru.ru_stime),
    }
}

fn merge_into(dst: &mut Histogram<u64>, src: &Histogram<u64>) {
    // Both have the same bounds; `add` only fails on values outside them.
    let _ = dst.add(src);
}

impl Report {
    /// Combine the threads' results.
    pub fn build(
        o: &Opts,
        region: u64,
        run_id: u64,
        start: Instant,
        outs: Vec<ThreadOut>,
        cpu: CpuSample,
    ) -> Report {
        let mut all = None::<Histogram<u64>>;
        let mut read = None::<Histogram<u64>>;
        let mut write = None::<Histogram<u64>>;
        let mut seconds: Vec<Second> = Vec::new();
        let mut r = VerifyOut {
            enabled: o.verify,
            run_id,
            ..Default::default()
        };
        let (mut ios, mut reads, mut writes, mut bytes, mut errors) = (0, 0, 0, 0, 0);
        let mut end = start;
        for out in outs {
            let s = out.stats;
            for (dst, src) in [
                (&mut all, &s.all),
                (&mut read, &s.read),
                (&mut write, &s.write),
            ] {
                match dst {
                    Some(d) => merge_into(d, src),
                    None => *dst = Some(src.clone()),
                }
            }
            for (i, sec) in s.seconds.into_iter().enumerate() {
                if i < seconds.len() {
                    seconds[i].ios += sec.ios;
                    merge_into(&mut seconds[i].hist, &sec.hist);
                } else {
                    seconds.push(sec);
                }
            }
            ios += s.ios;
            reads += s.reads;
            writes += s.writes;
            bytes += s.bytes;
            errors += s.errors;
            r.checked_reads += s.checked;
            r.mismatches += s.mismatches;
            r.first_mismatches.extend(s.mismatch_list);
            end = end.max(s.end);
        }
        r.first_mismatches.sort_by_key(|m| m.offset);
        r.first_mismatches.truncate(super::verify::MAX_REPORTED);
        let secs = end.saturating_duration_since(start).as_secs_f64().max(1e-9);
        let hist_lat = |h: &Option<Histogram<u64>>| h.as_ref().and_then(Lat::of);
        let timeline = seconds
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let len = (secs - i as f64).clamp(1e-3, 1.0);
                let q = |p: f64| {
                    if s.hist.is_empty() {
                        0.0
                    } else {
                        s.hist.value_at_quantile(p) as f64 / 1000.0
                    }
                };
                Point {
                    t: i as f64 + len,
                    ios: s.ios,
                    iops: s.ios as f64 / len,
                    p50_us: q(0.5),
                    p99_us: q(0.99),
                    max_us: if s.hist.is_empty() {
                        0.0
                    } else {
                        s.hist.max() as f64 / 1000.0
                    },
                }
            })
            .collect();
        let cpu_s = (cpu.user + cpu.sys).as_secs_f64();
        Report {
            tool: "twinperf",
            version: env!("CARGO_PKG_VERSION"),
            proto: o.target.proto,
            addr: o.target.addr.to_string(),
            name: o.target.name.clone(),
            rw: o.rw,
            rwmix_read: o.rw.read_percent(o.rwmix),
            bs: o.bs,
            qd: o.qd,
            conns: o.conns,
            threads: o.threads,
            region_offset: o.offset,
            region_bytes: region,
            rate_limit: o.rate,
            ios_requested: match o.stop {
                Stop::Ios(n) => Some(n),
                Stop::Time(_) => None,
            },
            seconds_requested: match o.stop {
                Stop::Time(d) => Some(d.as_secs_f64()),
                Stop::Ios(_) => None,
            },
            warmup_s: o.warmup.as_secs_f64(),
            seconds: secs,
            ios,
            reads,
            writes,
            bytes,
            errors,
            iops: ios as f64 / secs,
            mib_per_s: bytes as f64 / secs / 1048576.0,
            latency_us: hist_lat(&all).unwrap_or_default(),
            read_latency_us: hist_lat(&read),
            write_latency_us: hist_lat(&write),
            verify: r,
            cpu: Cpu {
                user_s: cpu.user.as_secs_f64(),
                sys_s: cpu.sys.as_secs_f64(),
                us_per_io: if ios == 0 {
                    0.0
                } else {
                    cpu_s * 1e6 / ios as f64
                },
            },
            timeline,
        }
    }
}

fn lat_line(f: &mut std::fmt::Formatter<'_>, what: &str, l: &Lat) -> std::fmt::Result {
    writeln!(
        f,
        "  {what:<6} min {:.1}  mean {:.1}  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
        l.min, l.mean, l.p50, l.p90, l.p99, l.p99_9, l.max
    )
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "twinperf {:?} {} {}: {:?} bs {} qd {} x {} conn(s), {} thread(s)",
            self.proto, self.addr, self.name, self.rw, self.bs, self.qd, self.conns, self.threads
        )?;
        writeln!(
            f,
            "ios {} (reads {}, writes {}, errors {}) in {:.2} s: {:.0} IOPS, {:.1} MiB/s",
            self.ios, self.reads, self.writes, self.errors, self.seconds, self.iops, self.mib_per_s
        )?;
        writeln!(f, "latency µs:")?;
        lat_line(f, "all", &self.latency_us)?;
        if let Some(l) = &self.read_latency_us {
            lat_line(f, "read", l)?;
        }
        if let Some(l) = &self.write_latency_us {
            lat_line(f, "write", l)?;
        }
        writeln!(
            f,
            "client cpu: user {:.2} s, sys {:.2} s, {:.2} µs per I/O",
            self.cpu.user_s, self.cpu.sys_s, self.cpu.us_per_io
        )?;
        if self.verify.enabled {
            write!(
                f,
                "verify: {} reads checked, {} mismatches",
                self.verify.checked_reads, self.verify.mismatches
            )?;
            for m in &self.verify.first_mismatches {
                write!(
                    f,
                    "\n  mismatch at byte {}: expected generation {}, found {}",
                    m.offset,
                    m.expected_generation,
                    if m.found.magic {
                        format!(
                            "offset {} run {:#x} generation {}",
                            m.found.offset, m.found.run, m.found.generation
                        )
                    } else {
                        "no twinperf stamp".to_string()
                    }
                )?;
            }
        } else {
            write!(f, "verify: off")?;
        }
        Ok(())
    }
}
