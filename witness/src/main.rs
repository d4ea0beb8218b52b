//! `twinblk-witness`: parse the command line, load the key and state, serve until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use twinblk_witness::{Config, Key, Witness};

/// The twinblk witness: decides which site survives when the two sites lose each other
/// (protocol: docs/witness-protocol.md).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// UDP address to listen on (a real deployment uses an address both sites reach).
    #[arg(long, default_value = "127.0.0.1:7790")]
    listen: SocketAddr,
    /// File holding the shared key (trailing whitespace ignored; at least 16 bytes).
    #[arg(long, required_unless_present_any = ["release_lost_holder", "show"])]
    key_file: Option<PathBuf>,
    /// The witness's state file (grants, epochs, counters).
    #[arg(long, default_value = "/var/lib/twinblk/witness.state")]
    state: PathBuf,
    /// How long the preferred site of a group must be silent before the other site may win a
    /// tie, in ms.
    #[arg(long, default_value_t = 1000)]
    tie_grace_ms: u64,
    /// After a start, how long a request for a group nobody holds waits, in ms: a site serving
    /// alone on a grant the state file does not show (restored from an older copy, or
    /// `--init`) claims it back meanwhile. Must exceed the sites' heartbeat interval.
    #[arg(long, default_value_t = 1000)]
    start_grace_ms: u64,
    /// Create the state file if it is missing (first start only: an empty state forgets every
    /// grant a previous witness made).
    #[arg(long)]
    init: bool,
    /// Operator, with the witness stopped: forget the survivor grant of GROUP (a volume's
    /// group, or its name), held by a site lost for good, and exit. The writes that site
    /// acknowledged alone are given up: the other site's `twinblk-ctl takeover
    /// --accept-data-loss` is then granted. If the lost site returns, the witness tells it
    /// its grant is gone: it fences and is resynced.
    #[arg(long, value_name = "GROUP", requires = "accept_data_loss")]
    release_lost_holder: Option<String>,
    /// Confirms `--release-lost-holder`.
    #[arg(long)]
    accept_data_loss: bool,
    /// Print the state file's groups (epoch, holder, preferred site) and sites, and exit (with
    /// a GROUP name: that group only). Read-only; the witness may be running.
    #[arg(long, value_name = "GROUP", num_args = 0..=1, default_missing_value = "")]
    show: Option<String>,
}

fn main() -> std::process::ExitCode {
    // A plain level (RUST_LOG=debug, ...), not an EnvFilter: its regex engine would be most of
    // this small program's code and resident memory.
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.trim().parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("twinblk-witness: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    if let Some(group) = &args.show {
        let name = (!group.is_empty()).then_some(group.as_str());
        print!(
            "{}",
            twinblk_witness::operator::show(&args.state, name).context("reading the state")?
        );
        return Ok(());
    }
    if let Some(group) = &args.release_lost_holder {
        let r = twinblk_witness::operator::release_lost_holder(&args.state, group)
            .with_context(|| format!("releasing group {group}"))?;
        println!(
            "group {group}: the grant of site {} (epoch {}) is released; the writes it \
             acknowledged alone are given up. Run `twinblk-ctl takeover VOLUME \
             --accept-data-loss` at the other site once this witness runs again. If the \
             released site returns, it fences and is resynced from the other.",
            r.holder.get(),
            r.epoch.0
        );
        return Ok(());
    }
    let key_file = args
        .key_file
        .expect("required without --release-lost-holder or --show");
    let key = Key::from_file(&key_file).context("loading the key")?;
    warn_if_readable(&key_file);
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    let mut w = Witness::open(Config {
        listen: args.listen,
        state: args.state,
        key,
        tie_grace: Duration::from_millis(args.tie_grace_ms),
        start_grace: Duration::from_millis(args.start_grace_ms),
        init: args.init,
    })?;
    w.serve(&stop)?;
    Ok(())
}

fn warn_if_readable(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path)
        && m.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            "key file is accessible by group or others; chmod 600 it"
        );
    }
}
