//! `twinblk-nvme`: a userspace NVMe/TCP initiator: discover subsystems, identify a controller
//! and its namespaces, and generate load with data verification.

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::time::Duration;
use twinblk_tools::nvmf::perf::{self, PerfOpts, Rw};
use twinblk_tools::nvmf::{self, Controller, Digests, Opts};

/// Talk NVMe/TCP to a target.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct Conn {
    /// Target address.
    #[arg(long, default_value = "127.0.0.1:4420")]
    addr: SocketAddr,
    /// Host NQN.
    #[arg(long, default_value = nvmf::DEFAULT_HOSTNQN)]
    hostnqn: String,
    /// Ask for header digests.
    #[arg(long)]
    hdgst: bool,
    /// Ask for data digests.
    #[arg(long)]
    ddgst: bool,
}

impl Conn {
    fn opts(&self) -> Opts {
        Opts {
            host: nvmf::Host {
                nqn: self.hostnqn.clone(),
                ..Default::default()
            },
            digests: Digests {
                header: self.hdgst,
                data: self.ddgst,
            },
            ..Default::default()
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// List the subsystems the discovery controller reports.
    Discover {
        #[command(flatten)]
        conn: Conn,
    },
    /// Identify a subsystem's controller and namespaces.
    Identify {
        #[command(flatten)]
        conn: Conn,
        /// Subsystem NQN.
        #[arg(long)]
        nqn: String,
    },
    /// Run reads/writes at a queue depth over several I/O queues.
    Perf {
        #[command(flatten)]
        conn: Conn,
        /// Subsystem NQN.
        #[arg(long)]
        nqn: String,
        /// Namespace id.
        #[arg(long, default_value_t = 1)]
        nsid: u32,
        /// I/O queues (one TCP connection each).
        #[arg(long, default_value_t = 4)]
        queues: u16,
        /// Commands in flight per queue.
        #[arg(long, default_value_t = 32)]
        qd: u16,
        /// read, write, randread, randwrite, randrw.
        #[arg(long, default_value = "randrw")]
        rw: Rw,
        /// Bytes per I/O (4k, 64k, 4096...).
        #[arg(long, default_value = "4k")]
        bs: String,
        /// Run time in seconds.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Verify read data (written pattern read back and compared).
        #[arg(long)]
        verify: bool,
        /// Bytes of the namespace to use (0: all, at most 1 GiB).
        #[arg(long, default_value = "0")]
        size: String,
    },
}

fn bytes(s: &str) -> Result<u64> {
    let s = s.trim().to_ascii_lowercase();
    let (n, m) = match s.strip_suffix('k') {
        Some(n) => (n, 1u64 << 10),
        None => match s.strip_suffix('m') {
            Some(n) => (n, 1 << 20),
            None => match s.strip_suffix('g') {
                Some(n) => (n, 1 << 30),
                None => (s.as_str(), 1),
            },
        },
    };
    match n.parse::<u64>().ok().and_then(|n| n.checked_mul(m)) {
        Some(v) => Ok(v),
        None => bail!("bad size {s:?}"),
    }
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Discover { conn } => {
            for e in nvmf::discover(conn.addr, &conn.opts())? {
                println!(
                    "trtype {} traddr {} trsvcid {} subnqn {}",
                    if e.trtype == 3 { "tcp" } else { "?" },
                    e.traddr,
                    e.trsvcid,
                    e.subnqn
                );
            }
        }
        Cmd::Identify { conn, nqn } => {
            let mut c = Controller::connect(conn.addr, &nqn, &conn.opts())?;
            let id = c.identify(0x01, 0)?;
            let s = |r: std::ops::Range<usize>| String::from_utf8_lossy(&id[r]).trim().to_string();
            println!(
                "cntlid {} sn {} mn {} fr {}",
                c.cntlid,
                s(4..24),
                s(24..64),
                s(64..72)
            );
            for ns in c.active_ns()? {
                let i = c.ns_info(ns)?;
                println!(
                    "  nsid {ns}: {} blocks of {} bytes ({} MiB), ANA group {}",
                    i.blocks,
                    i.block_size,
                    (i.blocks * u64::from(i.block_size)) >> 20,
                    i.anagrpid
                );
            }
        }
        Cmd::Perf {
            conn,
            nqn,
            nsid,
            queues,
            qd,
            rw,
            bs,
            seconds,
            verify,
            size,
        } => {
            let o = PerfOpts {
                addr: conn.addr,
                nqn,
                opts: conn.opts(),
                nsid,
                queues,
                qd,
                rw,
                bs: u32::try_from(bytes(&bs)?)?,
                duration: Duration::from_secs_f64(seconds),
                verify,
                region: bytes(&size)?,
            };
            let r = perf::run(&o)?;
            println!("{r}");
            if r.mismatches > 0 || r.errors > 0 {
                bail!("{} mismatches, {} errors", r.mismatches, r.errors);
            }
        }
    }
    Ok(())
}
