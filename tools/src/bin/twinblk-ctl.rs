//! `twinblk-ctl`: send one JSON-RPC call to a twinblk daemon's control socket and print the
//! result as pretty JSON (exit status 1 when the daemon answers with an error).

use anyhow::{Context, Result, bail};
use clap::Parser;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

/// Talk to a running twinblk daemon.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The daemon's control socket.
    #[arg(long, default_value = "/run/twinblk/twinblk.sock")]
    socket: PathBuf,
    /// Method: daemon_info, volume_list, export_list, reactor_stats, volume_stats,
    /// nvmf_subsystems.
    method: String,
    /// Parameters as a JSON value.
    #[arg(long)]
    params: Option<String>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut s = UnixStream::connect(&cli.socket).with_context(|| {
        format!(
            "connecting to {} (is `twinblk serve` running?)",
            cli.socket.display()
        )
    })?;
    let params: serde_json::Value = match &cli.params {
        Some(p) => serde_json::from_str(p).context("--params is not JSON")?,
        None => serde_json::Value::Null,
    };
    let req =
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": cli.method, "params": params});
    writeln!(s, "{req}")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    let reply: serde_json::Value =
        serde_json::from_str(&line).context("daemon reply is not JSON")?;
    if let Some(e) = reply.get("error") {
        bail!("daemon error: {e}");
    }
    println!("{}", serde_json::to_string_pretty(&reply["result"])?);
    Ok(())
}
