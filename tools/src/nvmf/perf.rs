//! Load generator over NVMe/TCP: one thread per I/O queue, each keeping `qd` commands in
//! flight, with optional data verification.
//!
//! Model: the tested region is split evenly over the queues; each queue works in its own
//! slice in units of `bs`, and never has two commands on the same unit at once, so every read
//! has exactly one expected content: the last write to that unit that completed before the read
//! was issued. Written data is a pattern derived from (LBA, write sequence number), so a
//! misplaced or stale block is detected, not only a corrupted one. With `verify`, every read of
//! a unit written in this run is compared, and the run ends with a read-back of every unit
//! written.

use super::{Controller, Opts, Queue, Sqe};
use anyhow::{Context, Result, ensure};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Access pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rw {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Random reads.
    RandRead,
    /// Random writes.
    RandWrite,
    /// Random 50/50 reads and writes.
    RandRw,
}

impl std::str::FromStr for Rw {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "read" => Rw::Read,
            "write" => Rw::Write,
            "randread" => Rw::RandRead,
            "randwrite" => Rw::RandWrite,
            "randrw" => Rw::RandRw,
            _ => {
                return Err(format!(
                    "unknown --rw {s:?} (read, write, randread, randwrite, randrw)"
                ));
            }
        })
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct PerfOpts {
    /// Target address.
    pub addr: SocketAddr,
    /// Subsystem NQN.
    pub nqn: String,
    /// Connection options.
    pub opts: Opts,
    /// Namespace id.
    pub nsid: u32,
    /// I/O queues (one TCP connection each).
    pub queues: u16,
    /// Commands in flight per queue.
    pub qd: u16,
    /// Access pattern.
    pub rw: Rw,
    /// Bytes per I/O (a multiple of the block size).
    pub bs: u32,
    /// Run time.
    pub duration: Duration,
    /// Verify read data.
    pub verify: bool,
    /// Bytes of the namespace to use (0: all, at most 1 GiB).
    pub region: u64,
}

/// Per-queue and total results.
#[derive(Clone, Debug, Default)]
pub struct PerfReport {
    /// I/Os completed.
    pub ios: u64,
    /// Reads completed.
    pub reads: u64,
    /// Writes completed.
    pub writes: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Seconds measured.
    pub secs: f64,
    /// Reads whose data was compared.
    pub verified: u64,
    /// Reads whose data did not match.
    pub mismatches: u64,
    /// Commands that completed with an error status.
    pub errors: u64,
    /// Latency percentiles in µs: p50, p99, max; and the mean.
    pub lat_us: [f64; 4],
    /// I/Os per queue.
    pub per_queue: Vec<u64>,
}

impl PerfReport {
    /// I/Os per second.
    pub fn iops(&self) -> f64 {
        self.ios as f64 / self.secs.max(1e-9)
    }
}

impl std::fmt::Display for PerfReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "ios {} (reads {}, writes {}) in {:.2} s: {:.0} IOPS, {:.1} MiB/s",
            self.ios,
            self.reads,
            self.writes,
            self.secs,
            self.iops(),
            self.bytes as f64 / self.secs.max(1e-9) / 1048576.0
        )?;
        writeln!(
            f,
            "latency us: mean {:.1}, p50 {:.1}, p99 {:.1}, max {:.1}",
            self.lat_us[3], self.lat_us[0], self.lat_us[1], self.lat_us[2]
        )?;
        writeln!(f, "per queue: {:?}", self.per_queue)?;
        write!(
            f,
            "verified reads {}, mismatches {}, errors {}",
            self.verified, self.mismatches, self.errors
        )
    }
}

/// The pattern written to a unit at `lba` by write number `seq`.
pub fn fill(buf: &mut [u8], lba: u64, seq: u32) {
    let mut x = (lba << 32) ^ u64::from(seq) ^ 0x9E37_79B9_7F4A_7C15;
    for w in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        w.copy_from_slice(&b[..w.len()]);
    }
}

struct Inflight {
    unit: usize,
    write: Option<u32>,
    start: Instant,
}

struct Worker {
    q: Queue,
    nsid: u32,
    nlb: u32,
    bs: u32,
    first_lba: u64,
    units: usize,
    expected: Vec<u32>,
    busy: Vec<bool>,
    inflight: HashMap<u16, Inflight>,
    seq: u32,
    rng: u64,
    next_unit: usize,
    buf: Vec<u8>,
    r: PerfReport,
    lats: Vec<u32>,
}

impl Worker {
    fn rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn pick(&mut self, random: bool) -> Option<usize> {
        for _ in 0..64 {
            let u = if random {
                (self.rand() % self.units as u64) as usize
            } else {
                let u = self.next_unit;
                self.next_unit = (self.next_unit + 1) % self.units;
                u
            };
            if !self.busy[u] {
                return Some(u);
            }
        }
        None
    }

    fn issue(&mut self, unit: usize, write: bool) -> Result<()> {
        let lba = self.first_lba + unit as u64 * u64::from(self.nlb);
        let sqe = Sqe::new(if write { 0x01 } else { 0x02 })
            .nsid(self.nsid)
            .lba(lba, self.nlb);
        let cid = if write {
            self.seq = self.seq.wrapping_add(1).max(1);
            let seq = self.seq;
            fill(&mut self.buf, lba, seq);
            self.q.submit(sqe, &self.buf, 0)?
        } else {
            self.q.submit(sqe, &[], self.bs)?
        };
        self.busy[unit] = true;
        self.inflight.insert(
            cid,
            Inflight {
                unit,
                write: write.then_some(self.seq),
                start: Instant::now(),
            },
        );
        Ok(())
    }

    fn reap(&mut self, verify: bool) -> Result<()> {
        let c = self.q.complete()?;
        let f = self
            .inflight
            .remove(&c.cid)
            .with_context(|| format!("completion for unknown cid {}", c.cid))?;
        self.busy[f.unit] = false;
        self.lats
            .push(f.start.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        self.r.ios += 1;
        self.r.bytes += u64::from(self.bs);
        if c.status != 0 {
            self.r.errors += 1;
            return Ok(());
        }
        match f.write {
            Some(seq) => {
                self.r.writes += 1;
                self.expected[f.unit] = seq;
            }
            None => {
                self.r.reads += 1;
                let seq = self.expected[f.unit];
                if verify && seq != 0 {
                    let lba = self.first_lba + f.unit as u64 * u64::from(self.nlb);
                    fill(&mut self.buf, lba, seq);
                    self.r.verified += 1;
                    if c.data != self.buf {
                        self.r.mismatches += 1;
                    }
                }
            }
        }
        Ok(())
    }

    fn run(
        mut self,
        rw: Rw,
        qd: usize,
        until: Instant,
        verify: bool,
    ) -> Result<(PerfReport, Vec<u32>)> {
        let random = matches!(rw, Rw::RandRead | Rw::RandWrite | Rw::RandRw);
        while Instant::now() < until {
            while self.inflight.len() < qd {
                let Some(u) = self.pick(random) else { break };
                let write = match rw {
                    Rw::Read | Rw::RandRead => false,
                    Rw::Write | Rw::RandWrite => true,
                    Rw::RandRw => self.rand() & 1 == 0,
                };
                self.issue(u, write)?;
            }
            self.reap(verify)?;
        }
        while !self.inflight.is_empty() {
            self.reap(verify)?;
        }
        if verify {
            // Read back every unit written in this run.
            let written: Vec<usize> = (0..self.units).filter(|&u| self.expected[u] != 0).collect();
            let mut it = written.into_iter();
            loop {
                while self.inflight.len() < qd {
                    let Some(u) = it.next() else { break };
                    self.issue(u, false)?;
                }
                if self.inflight.is_empty() {
                    break;
                }
                self.reap(true)?;
            }
        }
        Ok((self.r, self.lats))
    }
}

/// Run the load and return what it measured.
pub fn run(o: &PerfOpts) -> Result<PerfReport> {
    ensure!(
        o.queues > 0 && o.qd > 0,
        "--queues and --qd must be positive"
    );
    let mut ctrl = Controller::connect(o.addr, &o.nqn, &o.opts)?;
    let granted = ctrl.set_num_queues(o.queues)?;
    ensure!(
        granted >= o.queues,
        "target granted only {granted} I/O queues"
    );
    let ns = ctrl.ns_info(o.nsid)?;
    ensure!(
        o.bs > 0 && o.bs.is_multiple_of(ns.block_size),
        "--bs must be a multiple of the block size {}",
        ns.block_size
    );
    let size = ns.blocks * u64::from(ns.block_size);
    let region = if o.region == 0 {
        size.min(1 << 30)
    } else {
        o.region.min(size)
    };
    let units_total = region / u64::from(o.bs);
    let per_queue = (units_total / u64::from(o.queues)) as usize;
    ensure!(
        per_queue >= usize::from(o.qd),
        "region too small for {} x qd {}",
        o.queues,
        o.qd
    );
    let nlb = o.bs / ns.block_size;
    let mut workers = Vec::new();
    for i in 0..o.queues {
        let q = ctrl.io_queue(i + 1, o.qd + 1)?;
        workers.push(Worker {
            q,
            nsid: o.nsid,
            nlb,
            bs: o.bs,
            first_lba: i as u64 * per_queue as u64 * u64::from(nlb),
            units: per_queue,
            expected: vec![0; per_queue],
            busy: vec![false; per_queue],
            inflight: HashMap::new(),
            seq: 0,
            rng: 0x2545_F491_4F6C_DD1D ^ (u64::from(i) << 17 | 1),
            next_unit: 0,
            buf: vec![0; o.bs as usize],
            r: PerfReport::default(),
            lats: Vec::new(),
        });
    }
    let start = Instant::now();
    let until = start + o.duration;
    let (rw, qd, verify) = (o.rw, usize::from(o.qd), o.verify);
    let handles: Vec<_> = workers
        .into_iter()
        .map(|w| std::thread::spawn(move || w.run(rw, qd, until, verify)))
        .collect();
    let mut total = PerfReport::default();
    let mut lats = Vec::new();
    for h in handles {
        let (r, l) = h
            .join()
            .map_err(|_| anyhow::anyhow!("a queue thread panicked"))??;
        total.ios += r.ios;
        total.reads += r.reads;
        total.writes += r.writes;
        total.bytes += r.bytes;
        total.verified += r.verified;
        total.mismatches += r.mismatches;
        total.errors += r.errors;
        total.per_queue.push(r.ios);
        lats.extend(l);
    }
    total.secs = start.elapsed().as_secs_f64();
    lats.sort_unstable();
    if !lats.is_empty() {
        let pct = |p: f64| f64::from(lats[((lats.len() - 1) as f64 * p) as usize]);
        let mean = lats.iter().map(|&l| f64::from(l)).sum::<f64>() / lats.len() as f64;
        total.lat_us = [pct(0.5), pct(0.99), pct(1.0), mean];
    }
    drop(ctrl);
    Ok(total)
}
