//! twinperf: a load generator that speaks the target's protocols itself (NBD, NVMe/TCP, iSCSI),
//! built not to be the bottleneck of what it measures.
//!
//! Model:
//! - A run opens `conns` connections (NBD connections, NVMe/TCP I/O queues of one
//!   controller, or iSCSI sessions of one connection each) in the calling thread, then hands them round-robin to `threads` threads. Each
//!   thread runs one single-threaded event loop ([`engine`]) over its connections: fill every
//!   connection up to `qd` requests, send them with one `write` per connection per round, wait
//!   in `poll(2)`, read replies in big chunks and parse them in place. Nothing is allocated per
//!   I/O: request slots, payload buffers, the send and receive buffers are made once.
//! - The tested region (`offset`, `size`) is cut into units of `bs` bytes and split evenly
//!   between the connections; a connection issues I/O only inside its own slice and never has
//!   two requests on the same unit at once. So every read has exactly one expected content.
//! - Protocol codecs implement [`engine::Wire`] (encode a request, parse one reply from the
//!   front of a buffer); workload, verification, histograms, timeline and report are shared.
//!
//! Invariants:
//! - Bad input from the server (wrong magic, unknown or idle request id, lengths that do not
//!   fit, a connection closed early, silence past `timeout`) ends the run with an error; it
//!   never panics and never waits forever.
//! - With `verify`, a unit's expected generation changes only when a write to it completes
//!   successfully; a failed write makes the unit unknown (not checked again this run).

pub mod engine;
pub mod iscsi;
pub mod nbd;
pub mod nvme;
pub mod report;
pub mod svg;
pub mod tune;
pub mod verify;

use anyhow::{Context, Result, bail, ensure};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use report::Report;

/// Protocol spoken to the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// NBD, fixed newstyle, simple replies.
    Nbd,
    /// NVMe over TCP.
    Nvme,
    /// iSCSI.
    Iscsi,
}

/// Where to send I/O: parsed from a URI.
#[derive(Clone, Debug)]
pub struct Target {
    /// Protocol (from the scheme).
    pub proto: Proto,
    /// Address.
    pub addr: SocketAddr,
    /// NBD export name, NVMe subsystem NQN or iSCSI target IQN.
    pub name: String,
    /// iSCSI LUN.
    pub lun: u64,
}

impl std::str::FromStr for Target {
    type Err = anyhow::Error;
    /// `nbd://HOST:PORT/EXPORT`, `nvme+tcp://HOST:PORT/NQN` (or `nvme://`),
    /// `iscsi://HOST:PORT/IQN/LUN`.
    fn from_str(s: &str) -> Result<Self> {
        let (scheme, rest) = s
            .split_once("://")
            .with_context(|| format!("{s:?} is not a URI (nbd://, nvme+tcp://, iscsi://)"))?;
        let (proto, port) = match scheme {
            "nbd" => (Proto::Nbd, 10809),
            "nvme" | "nvme+tcp" => (Proto::Nvme, 4420),
            "iscsi" => (Proto::Iscsi, 3260),
            _ => bail!("unknown scheme {scheme:?} (nbd, nvme+tcp, iscsi)"),
        };
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let has_port = !host.ends_with(']')
            && host
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok());
        let addr = if has_port {
            host.to_string()
        } else {
            format!("{host}:{port}")
        };
        let addr = addr
            .to_socket_addrs()
            .with_context(|| format!("resolving {addr}"))?
            .next()
            .with_context(|| format!("{addr} resolves to nothing"))?;
        let (name, lun) = match proto {
            Proto::Iscsi => match path.rsplit_once('/') {
                Some((iqn, lun)) => (
                    iqn.to_string(),
                    lun.parse().with_context(|| format!("bad LUN {lun:?}"))?,
                ),
                None => (path.to_string(), 0),
            },
            _ => (path.to_string(), 0),
        };
        if proto == Proto::Nvme {
            ensure!(
                !name.is_empty(),
                "nvme+tcp:// needs the subsystem NQN as its path"
            );
        }
        Ok(Target {
            proto,
            addr,
            name,
            lun,
        })
    }
}

/// Access pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rw {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Random reads.
    RandRead,
    /// Random writes.
    RandWrite,
    /// Random reads and writes, `rwmix` % reads.
    RandRw,
    /// Sequential reads and writes, `rwmix` % reads.
    ReadWrite,
}

impl Rw {
    /// Random offsets (else each connection walks its slice in order).
    pub fn random(self) -> bool {
        matches!(self, Rw::RandRead | Rw::RandWrite | Rw::RandRw)
    }

    /// Percent of reads, given the `--rwmix` for the mixed patterns.
    pub fn read_percent(self, rwmix: u8) -> u8 {
        match self {
            Rw::Read | Rw::RandRead => 100,
            Rw::Write | Rw::RandWrite => 0,
            Rw::RandRw | Rw::ReadWrite => rwmix.min(100),
        }
    }
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
            "rw" | "readwrite" => Rw::ReadWrite,
            _ => {
                return Err(format!(
                    "unknown pattern {s:?} (read, write, randread, randwrite, randrw, rw)"
                ));
            }
        })
    }
}

/// When the run stops issuing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stop {
    /// After this long.
    Time(Duration),
    /// After this many I/Os in total (split evenly over the connections).
    Ios(u64),
}

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Where.
    pub target: Target,
    /// Pattern.
    pub rw: Rw,
    /// Percent of reads for the mixed patterns.
    pub rwmix: u8,
    /// Bytes per I/O.
    pub bs: u32,
    /// Requests in flight per connection.
    pub qd: u32,
    /// Connections (NVMe: I/O queues).
    pub conns: u32,
    /// Event-loop threads (each owns `conns / threads` connections).
    pub threads: u32,
    /// When to stop.
    pub stop: Stop,
    /// IOPS cap over the whole run (None: as fast as possible).
    pub rate: Option<u64>,
    /// Check read data against what this run wrote.
    pub verify: bool,
    /// Load expected generations from this file at start (if it exists) and save them at the end.
    pub verify_state: Option<PathBuf>,
    /// Bytes of the device to use (0: all of it, at most 1 GiB).
    pub size: u64,
    /// First byte of the region.
    pub offset: u64,
    /// NVMe namespace id.
    pub nsid: u32,
    /// Fail when the target is silent this long with requests outstanding.
    pub timeout: Duration,
    /// Seed of the offset generator (0: from the clock).
    pub seed: u64,
    /// iSCSI initiator name.
    pub initiator: String,
    /// iSCSI one-way CHAP credentials (None: no authentication).
    pub chap: Option<iscsi::Chap>,
    /// Not measured at the start of the run (part of a `Stop::Time`): I/Os completing in it
    /// count for nothing but errors and verification.
    pub warmup: Duration,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            target: Target {
                proto: Proto::Nbd,
                addr: SocketAddr::from(([127, 0, 0, 1], 10809)),
                name: String::new(),
                lun: 0,
            },
            rw: Rw::RandRead,
            rwmix: 50,
            bs: 4096,
            qd: 32,
            conns: 1,
            threads: 1,
            stop: Stop::Time(Duration::from_secs(5)),
            rate: None,
            verify: false,
            verify_state: None,
            size: 0,
            offset: 0,
            nsid: 1,
            timeout: Duration::from_secs(30),
            seed: 0,
            initiator: iscsi::DEFAULT_INITIATOR.into(),
            chap: None,
            warmup: Duration::ZERO,
        }
    }
}

/// Largest I/O accepted (NBD's usual request limit).
pub const MAX_BS: u32 = 32 << 20;
/// Largest queue depth per connection (NVMe command ids and request slots are 16-bit).
pub const MAX_QD: u32 = 4096;
/// Default region when `size` is 0: enough to defeat caches of a RAM volume's neighbours,
/// small enough that the verify map stays a few MiB.
pub const DEFAULT_REGION: u64 = 1 << 30;

/// Connected, ready-to-run connections plus what the target told about the device.
pub struct Connected {
    /// One codec + socket per connection.
    pub conns: Vec<engine::Link>,
    /// Device size in bytes.
    pub size: u64,
    /// Device block size (writes and offsets must be multiples of it).
    pub block: u32,
    /// Kept open for the run (the NVMe admin queue).
    pub keep: Option<Box<dyn Send>>,
}

/// Run the load described by `o` and return its report.
pub fn run(o: &Opts) -> Result<Report> {
    run_observed(o, &mut || {})
}

/// As [`run`], calling `at_measure` (on the calling thread) when the measurement starts: at
/// the end of the warm-up, or as the load starts without one. `twinperf tune` samples the
/// server's counters there.
pub fn run_observed(o: &Opts, at_measure: &mut dyn FnMut()) -> Result<Report> {
    ensure!(o.qd >= 1 && o.qd <= MAX_QD, "--qd must be 1..={MAX_QD}");
    ensure!(o.conns >= 1 && o.conns <= 1024, "--conns must be 1..=1024");
    ensure!(
        o.threads >= 1 && o.threads <= o.conns,
        "--threads must be 1..=--conns"
    );
    ensure!(
        o.bs >= 512 && o.bs <= MAX_BS && o.bs.is_multiple_of(512),
        "--bs must be a multiple of 512 up to {MAX_BS}"
    );
    ensure!(o.rate != Some(0), "--rate must be positive");
    if let Stop::Ios(n) = o.stop {
        ensure!(n > 0, "--ios must be positive");
        ensure!(
            o.warmup.is_zero(),
            "a warm-up needs a timed run (--seconds)"
        );
    }
    if let Stop::Time(d) = o.stop {
        ensure!(o.warmup < d, "the warm-up must be shorter than the run");
    }
    let connected = match o.target.proto {
        Proto::Nbd => nbd::connect(o)?,
        Proto::Nvme => nvme::connect(o)?,
        Proto::Iscsi => iscsi::connect(o)?,
    };
    ensure!(
        o.bs.is_multiple_of(connected.block),
        "--bs {} is not a multiple of the device's block size {}",
        o.bs,
        connected.block
    );
    ensure!(
        o.offset.is_multiple_of(u64::from(connected.block)) && o.offset < connected.size,
        "--offset must be block-aligned and inside the device ({} bytes)",
        connected.size
    );
    let avail = connected.size - o.offset;
    let region = if o.size == 0 {
        avail.min(DEFAULT_REGION)
    } else {
        ensure!(
            o.size <= avail,
            "--size {} runs past the device's end ({} bytes from --offset)",
            o.size,
            avail
        );
        o.size
    };
    let units = region / u64::from(o.bs);
    let per_conn = units / u64::from(o.conns);
    ensure!(
        per_conn >= u64::from(o.qd) && per_conn <= u64::from(u32::MAX),
        "the region ({region} bytes) gives each of {} connections {per_conn} blocks of {}: \
         need at least --qd {}",
        o.conns,
        o.bs,
        o.qd
    );
    let layout = verify::Layout {
        offset: o.offset,
        bs: o.bs,
        conns: o.conns,
        units_per_conn: per_conn as u32,
    };
    let seed = if o.seed == 0 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1
    } else {
        o.seed
    };
    let state = match (&o.verify_state, o.verify) {
        (Some(p), true) if p.exists() => verify::State::load(p, &layout)?,
        _ => verify::State::new(&layout, seed),
    };
    let run_id = state.run;
    let mut maps = state.split();

    let mut cpu0 = report::cpu_now();
    let start = Instant::now();
    let measure_from = start + o.warmup;
    let deadline = match o.stop {
        Stop::Time(d) => Some(start + d),
        Stop::Ios(_) => None,
    };
    let mut per_thread: Vec<Vec<engine::Conn>> = (0..o.threads).map(|_| Vec::new()).collect();
    for (i, link) in connected.conns.into_iter().enumerate() {
        let quota = match o.stop {
            Stop::Ios(n) => {
                let c = u64::from(o.conns);
                Some(n / c + u64::from((i as u64) < n % c))
            }
            Stop::Time(_) => None,
        };
        let conn = engine::Conn::new(
            link,
            engine::Work {
                index: i as u32,
                first_unit: u64::from(layout.units_per_conn) * i as u64,
                units: layout.units_per_conn,
                rng: seed ^ ((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                quota,
                expected: std::mem::take(&mut maps[i]),
            },
            o,
            run_id,
        )?;
        per_thread[i % o.threads as usize].push(conn);
    }
    let rate = o.rate.map(|r| r as f64 / f64::from(o.threads));
    let timeout = o.timeout;
    let handles: Vec<_> = per_thread
        .into_iter()
        .enumerate()
        .map(|(t, conns)| {
            std::thread::Builder::new()
                .name(format!("twinperf-{t}"))
                .spawn(move || {
                    engine::run_thread(conns, start, measure_from, deadline, rate, timeout)
                })
        })
        .collect::<std::io::Result<_>>()
        .context("starting threads")?;
    if !o.warmup.is_zero() {
        std::thread::sleep(measure_from.saturating_duration_since(Instant::now()));
        cpu0 = report::cpu_now();
    }
    at_measure();
    let mut outs = Vec::new();
    let mut first_err = None;
    for h in handles {
        match h.join() {
            Ok(Ok(out)) => outs.push(out),
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert(anyhow::anyhow!("an event-loop thread panicked"));
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let cpu = report::cpu_now().since(&cpu0);
    drop(connected.keep);
    let mut gens = vec![Vec::new(); o.conns as usize];
    for out in &mut outs {
        for (i, g) in out.expected.drain(..) {
            gens[i as usize] = g;
        }
    }
    if let (Some(p), true) = (&o.verify_state, o.verify) {
        verify::State::join(layout, run_id, gens).save(p)?;
    }
    Ok(Report::build(o, region, run_id, measure_from, outs, cpu))
}

#[cfg(test)]
mod tests {
    use super::engine::{Slots, Wire};
    use super::*;

    /// Random replies, shaped like each protocol's headers so they get past the first checks,
    /// never make a codec panic: each parse is a reply, "need more bytes", or an error.
    #[test]
    fn codecs_survive_random_replies() {
        let slots = Slots::with_busy(4096, &[(0, false), (1, true), (2, false), (3, true)]);
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let session = iscsi::Session {
            cmdsn: 1,
            exp_statsn: 1,
            window: 128,
            target_mrdsl: 1024,
            first_burst: 2048,
            immediate: true,
        };
        // Replies each codec accepted, errors it returned: both must occur, or the inputs are
        // too far off (or too tame) to test anything.
        let mut accepted = [0u32; 3];
        let mut refused = [0u32; 3];
        for round in 0..30_000u32 {
            let mut wire: Box<dyn Wire> = match round % 3 {
                0 => Box::new(nbd::NbdWire::for_test(4096)),
                1 => Box::new(nvme::NvmeWire::for_test(4096)),
                _ => Box::new(iscsi::IscsiWire::new(&session, [0; 8], 512)),
            };
            let len = (rnd() % 200) as usize;
            let mut b: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
            // Plausible headers: a known magic / type / opcode, small lengths, live ids.
            match round % 3 {
                0 if len >= 16 => {
                    b[0..4].copy_from_slice(&nbd::SIMPLE_REPLY_MAGIC.to_be_bytes());
                    b[8..15].fill(0);
                    b[15] &= 7;
                }
                1 if len >= 24 => {
                    b[0] = [3, 5, 7, 9][(rnd() % 4) as usize];
                    b[2] = [8, 24, 72][(rnd() % 3) as usize];
                    let plen = if rnd() % 2 == 0 { 24 } else { rnd() % 220 } as u32;
                    b[4..8].copy_from_slice(&plen.to_le_bytes());
                    b[9] = 0;
                    b[8] &= 7;
                    b[21] = 0;
                    b[20] &= 7;
                    if rnd() % 2 == 0 {
                        // C2HData whose lengths add up.
                        b[3] = 24;
                        b[16..20].copy_from_slice(&plen.saturating_sub(24).to_le_bytes());
                    }
                }
                2 if len >= 48 => {
                    b[0] = [0x20, 0x21, 0x25, 0x31, 0x32, 0x3f][(rnd() % 6) as usize];
                    b[4] = 0;
                    b[5] = 0;
                    b[6] = 0;
                    b[7] = (rnd() % 160) as u8;
                    b[16..19].fill(0);
                    b[19] &= 7;
                }
                _ => {}
            }
            let mut out = Vec::new();
            let mut at = 0;
            while at < b.len() {
                match wire.parse(&b[at..], &slots, &mut out) {
                    Ok(Some(p)) => {
                        accepted[(round % 3) as usize] += 1;
                        assert!(p.used > 0 && p.used <= b.len() - at);
                        if let Some((_, r)) = &p.data {
                            assert!(r.end <= p.used);
                        }
                        at += p.used;
                    }
                    Ok(None) => break,
                    Err(_) => {
                        refused[(round % 3) as usize] += 1;
                        break;
                    }
                }
            }
        }
        assert!(
            accepted.iter().chain(&refused).all(|&n| n > 20),
            "accepted {accepted:?}, refused {refused:?}"
        );
    }
}
