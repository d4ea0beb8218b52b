//! `nvme_latency`: queue-depth-1 latency of plain writes, fused Compare and Write and
//! reservation commands through the userspace NVMe/TCP initiator (`twinblk_tools::nvmf`), to
//! compare what the commands that only a mirrored volume's leader decides cost (driven by
//! `benches/caw_compare.sh`).
//!
//! In this order, on one I/O queue, one command at a time:
//!
//! 1. untimed: write each of the first 1024 blocks once with a known pattern (this tool then
//!    knows every test block's content);
//! 2. `write`: `--ops` one-block writes to random blocks among the 1024, each with a new
//!    pattern derived from a counter;
//! 3. `caw`: `--ops` one-block fused Compare and Write to random blocks among the 1024, the
//!    expected data being what this tool last wrote there, so every pair must succeed: any
//!    other status than (0, 0) panics;
//! 4. `resv`: `--ops` / 2 Reservation Register + Unregister pairs, each command timed on its
//!    own (also reported per kind as `resv_register` and `resv_unregister`);
//! 5. untimed: read the 1024 blocks back and check them.
//!
//! One line per measure on stdout, `key=value` separated by spaces:
//!
//! ```text
//! measure=caw bytes=4096 count=2000 p50_us=61.2 p99_us=140.9 mean_us=66.0 max_us=412.3
//! ```
//!
//! The host (NQN and 128-bit host identifier) is derived from `--host-id`: give every run its
//! own so registrations of different runs never meet.

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use twinblk_tools::nvmf::{Controller, Host, Opts, Queue, rrega};

/// Blocks the test touches (the first ones of the namespace).
const BLOCKS: u64 = 1024;

/// Queue-depth-1 latency of writes, compare-and-write and reservation commands.
#[derive(Parser)]
struct Cli {
    /// Target NVMe/TCP address.
    #[arg(long, default_value = "127.0.0.1:4420")]
    addr: SocketAddr,
    /// Subsystem NQN.
    #[arg(long, default_value = "nqn.2026-11.io.twinblk:vol0")]
    nqn: String,
    /// Namespace id.
    #[arg(long, default_value_t = 1)]
    nsid: u32,
    /// Timed commands per measure (reservations: half as many Register + Unregister pairs).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(2..))]
    ops: u32,
    /// This run's host number (host NQN, host identifier, reservation keys and the random
    /// block sequence derive from it).
    #[arg(long, default_value_t = 1)]
    host_id: u64,
}

/// splitmix64: a small deterministic generator for the block choice.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn block(&mut self) -> u64 {
        self.next() % BLOCKS
    }
}

/// The content of a block written as write number `n`: every 8 bytes differ, and so does
/// every write.
fn pattern(n: u64, bs: usize) -> Vec<u8> {
    let mut b = vec![0u8; bs];
    for (i, w) in b.chunks_mut(8).enumerate() {
        let v = n
            .wrapping_mul(0x100_0000_01B3)
            .wrapping_add(i as u64)
            .rotate_left(17)
            ^ 0xA5A5_5A5A_0F0F_F0F0;
        w.copy_from_slice(&v.to_le_bytes()[..w.len()]);
    }
    b
}

/// Latency samples of one measure.
struct Samples(Vec<Duration>);

impl Samples {
    fn with_capacity(n: usize) -> Self {
        Samples(Vec::with_capacity(n))
    }

    fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = f();
        self.0.push(t.elapsed());
        r
    }

    /// Print the measure's line (percentiles: nearest rank below, as `twinblk-nvme perf`).
    fn report(mut self, measure: &str, bytes: usize) {
        self.0.sort_unstable();
        let n = self.0.len();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let pct = |p: f64| us(self.0[((n - 1) as f64 * p) as usize]);
        let mean = self.0.iter().map(|&d| us(d)).sum::<f64>() / n as f64;
        println!(
            "measure={measure} bytes={bytes} count={n} p50_us={:.1} p99_us={:.1} mean_us={mean:.1} max_us={:.1}",
            pct(0.5),
            pct(0.99),
            pct(1.0)
        );
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(b"twinblkL");
    id[8..].copy_from_slice(&cli.host_id.to_be_bytes());
    let opts = Opts {
        host: Host {
            nqn: format!(
                "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-{:012x}",
                cli.host_id & 0xFFFF_FFFF_FFFF
            ),
            id,
        },
        ..Opts::default()
    };
    let mut ctrl = Controller::connect(cli.addr, &cli.nqn, &opts)
        .with_context(|| format!("connecting to {} at {}", cli.nqn, cli.addr))?;
    let ns = ctrl
        .ns_info(cli.nsid)
        .with_context(|| format!("identifying namespace {}", cli.nsid))?;
    ensure!(
        ns.blocks >= BLOCKS,
        "namespace {} has {} blocks, the test needs {BLOCKS}",
        cli.nsid,
        ns.blocks
    );
    let bs = ns.block_size;
    let bsz = bs as usize;
    let mut q = ctrl.io_queue(1, 8).context("opening I/O queue 1")?;
    let nsid = cli.nsid;
    let ops = cli.ops as usize;
    let mut rng = Rng(cli.host_id);
    let mut counter = 0u64;
    let mut next = |bs: usize| {
        counter += 1;
        pattern(counter, bs)
    };

    // What this tool last wrote to each test block.
    let mut content: Vec<Vec<u8>> = Vec::with_capacity(BLOCKS as usize);
    for lba in 0..BLOCKS {
        let data = next(bsz);
        q.write(nsid, lba, &data, bs, false)
            .with_context(|| format!("initial write of block {lba}"))?;
        content.push(data);
    }

    let mut lat = Samples::with_capacity(ops);
    for _ in 0..ops {
        let lba = rng.block();
        let data = next(bsz);
        lat.time(|| q.write(nsid, lba, &data, bs, false))
            .with_context(|| format!("write of block {lba}"))?;
        content[lba as usize] = data;
    }
    lat.report("write", bsz);

    let mut lat = Samples::with_capacity(ops);
    for _ in 0..ops {
        let lba = rng.block();
        let data = next(bsz);
        let expect = &content[lba as usize];
        let statuses = lat
            .time(|| q.compare_and_write(nsid, lba, expect, &data, bs))
            .with_context(|| format!("compare-and-write of block {lba}"))?;
        assert_eq!(
            statuses,
            (0, 0),
            "compare-and-write of block {lba} with its last written content did not succeed: \
             compare status {:#05x}, write status {:#05x}",
            statuses.0,
            statuses.1
        );
        content[lba as usize] = data;
    }
    lat.report("caw", bsz);

    let pairs = ops / 2;
    let (mut reg, mut unreg) = (Samples::with_capacity(pairs), Samples::with_capacity(pairs));
    for i in 0..pairs as u64 {
        // A nonzero key of this run.
        let key = (cli.host_id << 32) | (i + 1);
        let s = reg
            .time(|| q.resv_register(nsid, rrega::REGISTER, false, 0, key))
            .context("Reservation Register")?;
        ensure!(
            s == 0,
            "Reservation Register (key {key:#x}) failed: status {s:#05x}"
        );
        let s = unreg
            .time(|| q.resv_register(nsid, rrega::UNREGISTER, false, key, 0))
            .context("Reservation Register (unregister)")?;
        ensure!(
            s == 0,
            "Reservation Unregister (key {key:#x}) failed: status {s:#05x}"
        );
    }
    let both = Samples(reg.0.iter().chain(&unreg.0).copied().collect());
    both.report("resv", 16);
    reg.report("resv_register", 16);
    unreg.report("resv_unregister", 16);

    check(&mut q, nsid, bs, &content)
}

/// Read the test blocks back: each must hold what this tool last wrote there.
fn check(q: &mut Queue, nsid: u32, bs: u32, content: &[Vec<u8>]) -> Result<()> {
    for (lba, want) in content.iter().enumerate() {
        let got = q
            .read(nsid, lba as u64, 1, bs)
            .with_context(|| format!("read-back of block {lba}"))?;
        if &got != want {
            bail!("block {lba} does not hold the data last written there");
        }
    }
    Ok(())
}
