//! `twinperf`: a load generator that speaks NBD, NVMe/TCP and iSCSI itself, with
//! data verification, latency percentiles, JSON output and an SVG timeline.
//!
//! Exit codes: 0 success; 1 error (connection, protocol, options); 2 usage (clap);
//! 3 verification found mismatches; 4 the target failed I/Os (and no mismatch).
//!
//! `twinperf tune TARGET --control SOCKET ...` sweeps the target's wait policy, queues and
//! depth and recommends a configuration ([`perf::tune`]); exit 0 done, 1 error, 2 usage, 6 the
//! wait policy found could not be put back, 130 interrupted (Ctrl-C; the policy is put back
//! and the points measured so far are reported).

use anyhow::{Context, Result, bail};
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use twinblk_tools::perf::{self, Opts, Rw, Stop, Target};

/// Drive a block target over NBD, NVMe/TCP or iSCSI and measure it.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// nbd://HOST:PORT/EXPORT, nvme+tcp://HOST:PORT/NQN or iscsi://HOST:PORT/IQN/LUN.
    target: Target,
    /// read, write, randread, randwrite, randrw, rw (sequential mix).
    #[arg(long, default_value = "randread")]
    rw: Rw,
    /// Percent of reads in randrw and rw.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    rwmix: u8,
    /// Bytes per I/O (512 .. 32m; suffixes k, m).
    #[arg(long, default_value = "4k")]
    bs: String,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 32)]
    qd: u32,
    /// Connections (NVMe: I/O queues of one controller).
    #[arg(long, default_value_t = 1)]
    conns: u32,
    /// Event-loop threads; connections are shared out round-robin.
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// Run this long (seconds); the default when --ios is not given.
    #[arg(long, conflicts_with = "ios")]
    seconds: Option<f64>,
    /// Run exactly this many I/Os.
    #[arg(long)]
    ios: Option<u64>,
    /// Seconds at the start of a timed run that are not measured (part of --seconds).
    #[arg(long, default_value_t = 0.0, conflicts_with = "ios")]
    warmup: f64,
    /// Cap the rate at this many IOPS (whole run).
    #[arg(long)]
    rate: Option<u64>,
    /// Stamp written blocks and check every read of a block this run wrote.
    #[arg(long)]
    verify: bool,
    /// With --verify: load expected contents from FILE if it exists, save them there at the end.
    #[arg(long, value_name = "FILE")]
    verify_state: Option<PathBuf>,
    #[command(flatten)]
    place: Place,
    /// Seed of the offset generator (0: from the clock).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// iSCSI: log in with one-way CHAP (MD5) as this user (needs --chap-secret-file).
    #[arg(long, requires = "chap_secret_file")]
    chap_user: Option<String>,
    /// iSCSI: file whose first line is the CHAP secret.
    #[arg(long, value_name = "FILE", requires = "chap_user")]
    chap_secret_file: Option<PathBuf>,
    /// Print the report as JSON (instead of text).
    #[arg(long)]
    json: bool,
    /// Also write the report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json_out: Option<PathBuf>,
    /// Write a per-second IOPS and p50/p99 latency plot to FILE (SVG).
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
}

fn bytes(s: &str) -> Result<u64> {
    let s = s.trim().to_ascii_lowercase();
    let (n, m) = match s.as_bytes().last() {
        Some(b'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some(b'm') => (&s[..s.len() - 1], 1 << 20),
        Some(b'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s.as_str(), 1),
    };
    match n.parse::<u64>().ok().and_then(|n| n.checked_mul(m)) {
        Some(v) => Ok(v),
        None => bail!("bad size {s:?}"),
    }
}

fn secs(v: f64, what: &str) -> Result<Duration> {
    if !(v.is_finite() && v > 0.0 && v < 1e7) {
        bail!("{what} must be a positive number of seconds");
    }
    Ok(Duration::from_secs_f64(v))
}

fn run(cli: Cli) -> Result<ExitCode> {
    let stop = match (cli.ios, cli.seconds) {
        (Some(n), _) => Stop::Ios(n),
        (None, s) => Stop::Time(secs(s.unwrap_or(5.0), "--seconds")?),
    };
    let chap = match (cli.chap_user, &cli.chap_secret_file) {
        (Some(user), Some(f)) => {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            let secret = text.lines().next().unwrap_or("").as_bytes().to_vec();
            if secret.is_empty() {
                bail!("{} holds no CHAP secret", f.display());
            }
            Some(perf::iscsi::Chap { user, secret })
        }
        _ => None,
    };
    let o = Opts {
        target: cli.target,
        rw: cli.rw,
        rwmix: cli.rwmix,
        bs: u32::try_from(bytes(&cli.bs)?).context("--bs too large")?,
        qd: cli.qd,
        conns: cli.conns,
        threads: cli.threads,
        stop,
        rate: cli.rate,
        verify: cli.verify,
        verify_state: cli.verify_state,
        size: bytes(&cli.place.size)?,
        offset: bytes(&cli.place.offset)?,
        nsid: cli.place.nsid,
        timeout: secs(cli.place.timeout, "--timeout")?,
        seed: cli.seed,
        initiator: cli.place.initiator,
        chap,
        warmup: if cli.warmup == 0.0 {
            Duration::ZERO
        } else {
            secs(cli.warmup, "--warmup")?
        },
    };
    if o.verify_state.is_some() && !o.verify {
        bail!("--verify-state needs --verify");
    }
    let r = perf::run(&o)?;
    let json = serde_json::to_string_pretty(&r)?;
    if let Some(p) = &cli.json_out {
        std::fs::write(p, &json).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &cli.svg {
        std::fs::write(p, perf::svg::render(&r))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if cli.json {
        println!("{json}");
    } else {
        println!("{r}");
    }
    Ok(if r.verify.mismatches > 0 {
        eprintln!(
            "twinperf: {} verification mismatch(es)",
            r.verify.mismatches
        );
        ExitCode::from(3)
    } else if r.errors > 0 {
        eprintln!("twinperf: the target failed {} I/O(s)", r.errors);
        ExitCode::from(4)
    } else {
        ExitCode::SUCCESS
    })
}

/// Sweep the target's wait policy, queues and depth; recommend a configuration.
/// Where on the target the I/O goes and how long a silent target is waited for (a run and
/// `tune` take the same).
#[derive(clap::Args)]
struct Place {
    /// Bytes of the device to use (0: all of it, at most 1 GiB; suffixes k, m, g).
    #[arg(long, default_value = "0")]
    size: String,
    /// First byte of the region used (suffixes k, m, g).
    #[arg(long, default_value = "0")]
    offset: String,
    /// NVMe namespace id.
    #[arg(long, default_value_t = 1)]
    nsid: u32,
    /// Fail when the target sends nothing for this many seconds with requests outstanding.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// iSCSI initiator name.
    #[arg(long, default_value = perf::iscsi::DEFAULT_INITIATOR)]
    initiator: String,
}

#[derive(Parser)]
#[command(name = "twinperf tune", version)]
struct TuneCli {
    /// nbd://HOST:PORT/EXPORT, nvme+tcp://HOST:PORT/NQN or iscsi://HOST:PORT/IQN/LUN.
    target: Target,
    /// The target's control socket (sets the wait policy, reads reactors and CPU).
    #[arg(long, value_name = "SOCKET")]
    control: Option<PathBuf>,
    /// Seconds for the whole sweep.
    #[arg(long, default_value_t = 60.0)]
    budget: f64,
    /// read, write, randread, randwrite, randrw, rw (sequential mix).
    #[arg(long, default_value = "randread")]
    rw: Rw,
    /// Percent of reads in randrw and rw.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    rwmix: u8,
    /// Bytes per I/O (512 .. 32m; suffixes k, m).
    #[arg(long, default_value = "4k")]
    bs: String,
    /// Wait policies to sweep (comma-separated; default poll,adaptive,interrupt).
    #[arg(long, value_delimiter = ',')]
    waits: Option<Vec<String>>,
    /// Queue counts to sweep (comma-separated; default 1,2,4.. up to twice the reactors).
    #[arg(long, value_delimiter = ',')]
    queues: Option<Vec<u32>>,
    /// Depths to sweep (comma-separated; default 1,8,32,128).
    #[arg(long, value_delimiter = ',')]
    depths: Option<Vec<u32>>,
    #[command(flatten)]
    place: Place,
    /// Print the report as JSON (instead of text).
    #[arg(long)]
    json: bool,
    /// Also write the report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json_out: Option<PathBuf>,
}

fn tune(cli: TuneCli) -> Result<ExitCode> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&interrupted)).context("signal handler")?;
    }
    let base = Opts {
        target: cli.target,
        rw: cli.rw,
        rwmix: cli.rwmix,
        bs: u32::try_from(bytes(&cli.bs)?).context("--bs too large")?,
        size: bytes(&cli.place.size)?,
        offset: bytes(&cli.place.offset)?,
        nsid: cli.place.nsid,
        timeout: secs(cli.place.timeout, "--timeout")?,
        initiator: cli.place.initiator,
        ..Opts::default()
    };
    let o = perf::tune::TuneOpts {
        base,
        control: cli.control,
        budget: secs(cli.budget, "--budget")?,
        waits: cli.waits,
        queues: cli.queues,
        depths: cli.depths,
        interrupted: Arc::clone(&interrupted),
    };
    let r = perf::tune::tune(&o)?;
    let json = serde_json::to_string_pretty(&r)?;
    if let Some(p) = &cli.json_out {
        std::fs::write(p, &json).with_context(|| format!("writing {}", p.display()))?;
    }
    if cli.json {
        println!("{json}");
    } else {
        println!("{r}");
    }
    Ok(if r.restored == Some(false) {
        eprintln!("twinperf tune: the wait policy read back differs from the one found");
        ExitCode::from(6)
    } else if interrupted.load(Ordering::SeqCst) {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == "tune") {
        return match tune(TuneCli::parse_from(std::env::args_os().skip(1))) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("twinperf tune: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    match run(Cli::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("twinperf: {e:#}");
            ExitCode::from(1)
        }
    }
}
