//! `twinlink`: a userspace TCP proxy that emulates an inter-site link (delay, jitter,
//! bandwidth, loss, cuts), changed at run time through its control socket. The model is in
//! `twinblk_tools::twinlink`; the operator's guide is docs/twinlink.md.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;
use twinblk_tools::twinlink::control::{ControlServer, request};
use twinblk_tools::twinlink::{DEFAULT_LOSS_DELAY_MS, DEFAULT_MAX_QUEUE, LinkSpec, Proxy, Shape};

/// Emulate the link between two sites on one machine.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve links until SIGINT/SIGTERM.
    Serve {
        /// A link: NAME,LISTEN,TARGET (e.g. a2b,127.0.0.1:7001,127.0.0.1:7000); repeatable.
        #[arg(long = "link", required_unless_present = "udp_links")]
        links: Vec<LinkSpec>,
        /// A UDP link: NAME,LISTEN,TARGET (e.g. the path to the witness); repeatable. Loss
        /// and cuts drop its datagrams.
        #[arg(long = "udp-link")]
        udp_links: Vec<LinkSpec>,
        /// Control socket (JSON lines; docs/twinlink.md).
        #[arg(long)]
        control: Option<PathBuf>,
        /// Round-trip time to add, ms (half of it each way; overrides --delay-ms).
        #[arg(long)]
        rtt_ms: Option<f64>,
        /// One-way delay, ms, in each direction.
        #[arg(long, default_value_t = 0.0)]
        delay_ms: f64,
        /// Jitter, ms (uniform in ±jitter per chunk; never reorders bytes).
        #[arg(long, default_value_t = 0.0)]
        jitter_ms: f64,
        /// Bandwidth limit per direction and connection, bytes/s (0: none).
        #[arg(long, default_value_t = 0)]
        rate_bytes_per_s: u64,
        /// Probability that a TCP segment is lost (the chunk is then delivered late).
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// Extra delay of a lost chunk, ms (a retransmission timeout).
        #[arg(long, default_value_t = DEFAULT_LOSS_DELAY_MS)]
        loss_delay_ms: f64,
        /// Start with the links cut (both ways).
        #[arg(long)]
        cut: bool,
        /// Bytes one direction of a connection may hold before the proxy stops reading.
        #[arg(long, default_value_t = DEFAULT_MAX_QUEUE)]
        max_queue: usize,
    },
    /// Send one JSON request to a running twinlink's control socket and print the answer
    /// (exit 1 when it says `"ok": false`).
    Ctl {
        /// The control socket.
        #[arg(long)]
        control: PathBuf,
        /// The request, e.g. '{"cmd":"cut","link":"a2b","dir":"fwd"}'.
        request: String,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Ctl {
            control,
            request: r,
        } => {
            let req: serde_json::Value = serde_json::from_str(&r).context("request is not JSON")?;
            let a = request(&control, &req)?;
            println!("{}", serde_json::to_string_pretty(&a)?);
            if a["ok"] != true {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Serve {
            mut links,
            udp_links,
            control,
            rtt_ms,
            delay_ms,
            jitter_ms,
            rate_bytes_per_s,
            loss,
            loss_delay_ms,
            cut,
            max_queue,
        } => {
            let shape = Shape {
                delay_ms: rtt_ms.map(|r| r / 2.0).unwrap_or(delay_ms),
                jitter_ms,
                rate_bytes_per_s,
                loss,
                loss_delay_ms,
                cut,
            };
            if let Err(e) = shape.validate() {
                bail!("{e}");
            }
            let mut signals = signal_hook::iterator::Signals::new([
                signal_hook::consts::SIGINT,
                signal_hook::consts::SIGTERM,
            ])?;
            links.extend(udp_links.into_iter().map(|l| LinkSpec { udp: true, ..l }));
            let specs: Vec<_> = links.iter().map(|l| (l.clone(), [shape; 2])).collect();
            let proxy = Arc::new(Proxy::start(&specs, max_queue)?);
            let ctl = control
                .as_deref()
                .map(|p| ControlServer::start(p, Arc::clone(&proxy)))
                .transpose()?;
            // Writes to a closed stdout are ignored (never a panic that drops the links).
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            for l in &links {
                let addr = proxy.addr(&l.name).map(|a| a.to_string());
                let _ = writeln!(
                    out,
                    "twinlink {} {} -> {} {}",
                    l.name,
                    addr.unwrap_or_default(),
                    l.target,
                    if l.udp { "udp" } else { "tcp" }
                );
            }
            if let Some(c) = &control {
                let _ = writeln!(out, "control {}", c.display());
            }
            let _ = out.flush();
            drop(out);
            let _ = signals.forever().next();
            if let Some(c) = ctl {
                c.stop();
            }
            Ok(())
        }
    }
}
