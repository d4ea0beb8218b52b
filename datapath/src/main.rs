//! `twinblk`: the target daemon's command line.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use twinblk::control::config::{Config, Wait};
use twinblk::daemon::Proto;

/// A userspace block target: volumes over NBD and NVMe/TCP on io_uring reactors.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve volumes. With no options: a 1 GiB RAM volume `vol0` on nbd://127.0.0.1:10809,
    /// nvme+tcp://127.0.0.1:4420/nqn.2026-11.io.twinblk:vol0 and
    /// iscsi://127.0.0.1:3260/iqn.2026-11.io.twinblk:vol0/0.
    Serve {
        /// TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Override the NBD listen addresses (repeatable).
        #[arg(long)]
        nbd_listen: Vec<SocketAddr>,
        /// Override the NVMe/TCP listen addresses (repeatable).
        #[arg(long)]
        nvmf_listen: Vec<SocketAddr>,
        /// Override the reactor cores, e.g. `0,1`.
        #[arg(long, value_delimiter = ',')]
        cores: Vec<usize>,
        /// Override the wait policy.
        #[arg(long)]
        wait: Option<Wait>,
        /// Override the control socket path (empty string: none).
        #[arg(long)]
        control_socket: Option<String>,
    },
    /// A two-site stretched cluster on loopback: sites a and b as two processes mirroring a
    /// RAM volume `vol0` (site a on NBD 10809 and NVMe/TCP 4420, site b on 10810 and 4421).
    Demo {
        /// Directory for the site configs and control sockets.
        #[arg(long, default_value = "/tmp/twinblk-demo")]
        dir: PathBuf,
        /// NBD port of site a (site b: the next one).
        #[arg(long, default_value_t = 10809)]
        nbd_port: u16,
        /// Replication port of site a (site b: the next one).
        #[arg(long, default_value_t = 7789)]
        repl_port: u16,
        /// NVMe/TCP port of site a (site b: the next one).
        #[arg(long, default_value_t = 4420)]
        nvmf_port: u16,
        /// iSCSI port of site a (site b: the next one).
        #[arg(long, default_value_t = 3260)]
        iscsi_port: u16,
        /// The witness's UDP port.
        #[arg(long, default_value_t = 7799)]
        witness_port: u16,
        /// Size of the mirrored RAM volume.
        #[arg(long, default_value = "1GiB")]
        size: String,
    },
    /// Run a witness (the same as the `twinblk-witness` binary; used by `demo` so that one
    /// `cargo run` has everything).
    #[command(hide = true)]
    Witness {
        /// UDP address to listen on.
        #[arg(long, default_value = "127.0.0.1:7790")]
        listen: std::net::SocketAddr,
        /// Shared key file (at least 16 bytes).
        #[arg(long)]
        key_file: PathBuf,
        /// State file.
        #[arg(long)]
        state: PathBuf,
        /// How long the preferred site keeps the right of way after it was last heard, ms.
        #[arg(long, default_value_t = 500)]
        tie_grace_ms: u64,
        /// After a start, how long a request for a group nobody holds waits, ms (a holder the
        /// state does not show claims its grant back meanwhile).
        #[arg(long, default_value_t = 500)]
        start_grace_ms: u64,
    },
    /// Continuous data protection: a volume's history (docs/cdp-format.md).
    Cdp {
        #[command(subcommand)]
        cmd: CdpCmd,
    },
    /// Check a configuration file and print it with every default filled in.
    CheckConfig {
        /// TOML configuration file.
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum CdpCmd {
    /// Serve a point in time of a volume's history, without copying it, as a volume of its own
    /// (read-only, or a sandbox whose writes are discarded when it stops) over NBD, NVMe/TCP and
    /// iSCSI, until Ctrl-C (docs/cdp-format.md, "Views"). Run it as a process of its own.
    /// Several `--dir` (a group, with `--time` or `--bookmark`): every volume at the same
    /// moment, one `--name` per `--dir`, all served by this one process.
    View {
        /// A volume's CDP directory (repeatable: a group's volumes, one `--name` each).
        #[arg(long, required = true)]
        dir: Vec<PathBuf>,
        /// Site time in ns since the epoch: every record at or before it.
        #[arg(long, conflicts_with = "seq", required_unless_present_any = ["seq", "bookmark"])]
        time: Option<u64>,
        /// Sequence number: every record up to it.
        #[arg(long)]
        seq: Option<u64>,
        /// A bookmark: its time.
        #[arg(long, conflicts_with_all = ["seq", "time"])]
        bookmark: Option<String>,
        /// Writable: writes go to a RAM overlay, discarded when the view stops.
        #[arg(long)]
        sandbox: bool,
        /// The view's volume name (NBD export, NVMe subsystem and iSCSI target suffix);
        /// repeatable: one per `--dir`, in the same order.
        #[arg(long, default_value = "view")]
        name: Vec<String>,
        /// NBD listen address ("" for none).
        #[arg(long, default_value = "127.0.0.1:10909")]
        nbd: String,
        /// NVMe/TCP listen address ("" for none).
        #[arg(long, default_value = "")]
        nvmf: String,
        /// iSCSI listen address ("" for none).
        #[arg(long, default_value = "")]
        iscsi: String,
        /// The view's reactor's core (a CPU number).
        #[arg(long, default_value_t = 0)]
        core: usize,
        /// Do not pin the view's reactor to `--core` (`[reactor] pin = false`).
        #[arg(long)]
        no_pin: bool,
        /// Stop (as on Ctrl-C) once process PID is no longer this one's parent: a daemon
        /// that started the view and was killed (its control socket's views).
        #[arg(long, hide = true)]
        parent: Option<u32>,
    },
    /// Print the restorable window of each volume's history.
    Window {
        /// A volume's CDP directory (repeatable).
        #[arg(long, required = true)]
        dir: Vec<PathBuf>,
    },
    /// Materialise a point in time as new files: one `--out` per `--dir`, in the same order.
    /// With several volumes (a group), `--time` restores them all to the same moment.
    Restore {
        /// A volume's CDP directory (repeatable).
        #[arg(long, required = true)]
        dir: Vec<PathBuf>,
        /// The new file for the volume of the `--dir` at the same position (must not exist).
        #[arg(long, required = true)]
        out: Vec<PathBuf>,
        /// Site time in ns since the epoch: every record at or before it.
        #[arg(long, conflicts_with = "seq", required_unless_present_any = ["seq", "bookmark"])]
        time: Option<u64>,
        /// Sequence number (one volume only): every record up to it.
        #[arg(long)]
        seq: Option<u64>,
        /// A bookmark (set with the control socket's cdp_bookmark): its time.
        #[arg(long, conflicts_with_all = ["seq", "time"])]
        bookmark: Option<String>,
        /// Stop (as on Ctrl-C: nothing is left) once process PID is no longer this one's
        /// parent: a daemon that started the restore and was killed.
        #[arg(long, hide = true)]
        parent: Option<u32>,
    },
    /// Roll a volume (or a group) back in place to a point of its history, with the daemon
    /// that serves it stopped: only blocks that differ are rewritten, and journaled, so the
    /// rollback can be undone until confirmed (docs/cdp-rollback.md).
    Rollback {
        /// The site's configuration file (the one its daemon serves).
        #[arg(long)]
        config: PathBuf,
        /// The volume.
        #[arg(long, required_unless_present = "group", conflicts_with = "group")]
        volume: Option<String>,
        /// Every volume of this group (`[[volume]] group`, default its name), to one time.
        #[arg(long)]
        group: Option<String>,
        /// Site time in ns since the epoch: every record at or before it.
        #[arg(long, conflicts_with_all = ["seq", "bookmark"])]
        time: Option<u64>,
        /// Sequence number (one volume only): every record up to it.
        #[arg(long, conflicts_with = "bookmark")]
        seq: Option<u64>,
        /// A bookmark: its time.
        #[arg(long)]
        bookmark: Option<String>,
        /// Compare every block of the volume, not only those written after the point.
        #[arg(long)]
        all: bool,
        /// Take the volume back to what it held before the rollback (then no rollback is left).
        #[arg(long, conflicts_with_all = ["time", "seq", "bookmark", "confirm", "yield_to_peer"])]
        undo: bool,
        /// Keep the rollback (its marker is removed; the history keeps its records).
        #[arg(long, conflicts_with_all = ["time", "seq", "bookmark", "all", "yield_to_peer"])]
        confirm: bool,
        /// At the peer site of a mirrored volume rolled back at the other site: mark this
        /// replica fenced so that its next session takes the rolled-back copy (nothing else is
        /// written).
        #[arg(long, conflicts_with_all = ["time", "seq", "bookmark", "all"])]
        yield_to_peer: bool,
    },
}

/// `twinblk cdp rollback`.
#[allow(clippy::too_many_arguments)]
fn rollback_cmd(
    config: &std::path::Path,
    volume: Option<String>,
    group: Option<String>,
    point: (Option<u64>, Option<u64>, Option<String>),
    all: bool,
    undo: bool,
    confirm: bool,
    yield_to_peer: bool,
) -> Result<()> {
    use twinblk::control::config::Backend;
    use twinblk::layer::cdp::{bookmark, pit, rollback};
    let cfg = load(Some(&config.to_path_buf()))?;
    cfg.validate()?;
    let vols: Vec<_> = cfg
        .volumes
        .iter()
        .filter(|v| match (&volume, &group) {
            (Some(n), _) => &v.name == n,
            (None, Some(g)) => v.group.as_ref().unwrap_or(&v.name) == g,
            (None, None) => false,
        })
        .collect();
    let what = match (&volume, &group) {
        (Some(n), _) => format!("volume {n:?}"),
        (_, g) => format!("group {:?}", g.clone().unwrap_or_default()),
    };
    anyhow::ensure!(
        !vols.is_empty(),
        "{}: no {what} (twinblk check-config lists the volumes)",
        config.display()
    );
    // A daemon answering on the control socket serves these volumes.
    let running = || -> Result<()> {
        let sock = &cfg.control.socket;
        if !sock.as_os_str().is_empty() && std::os::unix::net::UnixStream::connect(sock).is_ok() {
            anyhow::bail!(
                "a twinblk daemon answers on {} (the control socket of {}): stop it first",
                sock.display(),
                config.display()
            );
        }
        Ok(())
    };
    let state_of = |v: &twinblk::control::config::VolumeConfig| -> Result<Option<PathBuf>> {
        match (&cfg.mirror, v.mirror) {
            (Some(m), true) => {
                let dir = m.state_dir.as_ref().with_context(|| {
                    format!(
                        "volume {}: mirrored without [mirror] state_dir: a restart makes it a new replica that its peer overwrites; nothing to roll back here",
                        v.name
                    )
                })?;
                Ok(Some(twinblk::layer::mirror::rollback::state_path(
                    dir, &v.name,
                )))
            }
            _ => Ok(None),
        }
    };
    // The replica states are the daemon's: refused while a daemon (or another rollback) holds
    // the mirror's state directory (daemon/state_lock.rs), held until this command ends.
    let lock_states = || -> Result<Option<std::fs::File>> {
        match cfg.mirror.as_ref().and_then(|m| m.state_dir.as_ref()) {
            Some(d) if vols.iter().any(|v| v.mirror) => {
                twinblk::daemon::state_lock::lock_dir(d, "[mirror] state_dir")
                    .map(Some)
                    .map_err(anyhow::Error::msg)
            }
            _ => Ok(None),
        }
    };
    if yield_to_peer {
        running()?;
        let _states = lock_states()?;
        for v in &vols {
            let st = state_of(v)?
                .with_context(|| format!("volume {} is not mirrored: nothing to yield", v.name))?;
            // With a journal, its daemon lock says whether a daemon holds the volume.
            let _lock = match v.cdp.as_ref().filter(|c| c.enabled) {
                Some(c) => Some(rollback::lock_daemon(&c.dir)?),
                None => None,
            };
            let was = twinblk::layer::mirror::rollback::yield_to_peer(&st)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("volume {}", v.name))?;
            println!(
                "{}: {}",
                v.name,
                if was == 0 {
                    "fenced: its next session receives the peer's copy"
                } else {
                    "not in sync: its next session receives the peer's copy already"
                }
            );
        }
        return Ok(());
    }
    let mut dirs = Vec::new();
    for v in &vols {
        let c = v.cdp.as_ref().filter(|c| c.enabled).with_context(|| {
            format!(
                "volume {} has no [volume.cdp] journal: nothing to roll back to",
                v.name
            )
        })?;
        dirs.push((v, c));
    }
    if confirm {
        let vols: Vec<(String, PathBuf)> = dirs
            .iter()
            .map(|(v, c)| (v.name.clone(), c.dir.clone()))
            .collect();
        for (name, m) in rollback::confirm(&vols)? {
            match m {
                Some(m) => println!(
                    "{name}: confirmed the rollback to sequence {} (time {})",
                    m.target, m.target_time
                ),
                None => println!("{name}: no rollback to confirm: passed over"),
            }
        }
        return Ok(());
    }
    running()?;
    let _states = lock_states()?;
    let (time, seq, bm) = point;
    anyhow::ensure!(
        seq.is_none() || dirs.len() == 1,
        "--seq names a point of one volume; roll a group back with --time or --bookmark"
    );
    let time = match &bm {
        None => time,
        Some(b) => {
            let mut at = None;
            for (v, c) in &dirs {
                let t = bookmark::load(&c.dir)
                    .map_err(anyhow::Error::msg)?
                    .get(b)
                    .copied()
                    .with_context(|| format!("volume {}: no bookmark named {b:?}", v.name))?;
                anyhow::ensure!(
                    at.is_none_or(|a| a == t),
                    "bookmark {b:?} names different times in the group's volumes"
                );
                at = Some(t);
            }
            at
        }
    };
    let goal = match (undo, time, seq) {
        (true, _, _) => rollback::Goal::Undo,
        (false, Some(t), _) => rollback::Goal::To(pit::Point::Time(t)),
        (false, None, Some(s)) => rollback::Goal::To(pit::Point::Seq(s)),
        _ => anyhow::bail!("give --time, --seq or --bookmark (or --undo, --confirm)"),
    };
    // Every volume is checked, and locked, before any is changed.
    let mut prepared = Vec::new();
    for (v, c) in &dirs {
        anyhow::ensure!(
            v.backend == Backend::Uring && v.path.is_some(),
            "volume {}: a RAM volume's content does not outlive its daemon: nothing to roll back in place (twinblk cdp restore or view serve a point)",
            v.name
        );
        let t = rollback::Target {
            name: v.name.clone(),
            dir: c.dir.clone(),
            volume: v.path.clone().expect("checked"),
            segment_size: c.segment_size.0,
            mirror_state: state_of(v)?,
            all,
        };
        prepared.push((v.name.clone(), rollback::prepare(t, goal)?));
    }
    if prepared
        .iter()
        .all(|(_, p)| p.skip == Some(rollback::Skip::NoRollback))
    {
        anyhow::bail!(
            "no rollback to undo ({})",
            prepared
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    // Every lock is kept until the last volume is done (a skipped volume's too).
    let mut held = Vec::new();
    for (name, p) in prepared {
        match p.skip {
            Some(rollback::Skip::Done(m)) => {
                println!(
                    "{name}: already rolled back to sequence {}, not confirmed: --undo returns to sequence {}",
                    m.target, m.before
                );
                held.push(p);
                continue;
            }
            Some(rollback::Skip::NoRollback) => {
                println!("{name}: no rollback to undo: passed over");
                held.push(p);
                continue;
            }
            None => {}
        }
        if p.reverts > 0 {
            println!(
                "{name}: warning: the undo also reverts {} write records the daemon journaled after the rollback",
                p.reverts
            );
        }
        let mut last = std::time::Instant::now();
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let o = rollback::run(p, |g| {
            if last.elapsed() >= std::time::Duration::from_millis(200) || g.compared == g.total {
                last = std::time::Instant::now();
                eprint!(
                    "\r{name}: compared {:.1}/{:.1} MiB, rewrote {:.1} MiB",
                    mib(g.compared),
                    mib(g.total),
                    mib(g.written)
                );
            }
        })
        .with_context(|| format!("rolling back volume {name}"))?;
        eprintln!();
        if undo {
            println!(
                "{name}: undone: back to sequence {} ({} records journaled, {} bytes rewritten)",
                o.seq, o.records, o.progress.written
            );
        } else {
            if o.progress.preserved > 0 {
                println!(
                    "{name}: {} bytes the journal lacked were journaled first (the volume's own content, what --undo returns to)",
                    o.progress.preserved
                );
            }
            println!(
                "{name}: rolled back to sequence {} ({} records journaled, {} bytes rewritten); not confirmed: --undo returns to sequence {}, --confirm keeps it",
                o.seq, o.records, o.progress.written, o.before
            );
        }
    }
    Ok(())
}

/// The configuration of a daemon serving CDP views: one volume per `(dir, name)`, all at
/// `point` (several volumes: a group, at one time, as a group restore cuts it).
fn view_config(
    views: &[(PathBuf, String)],
    point: (Option<u64>, Option<u64>, Option<String>),
    sandbox: bool,
    listen: (&str, &str, &str),
    (core, pin): (usize, bool),
) -> Result<Config> {
    use twinblk::layer::cdp::store;
    let list = |a: &str| {
        if a.is_empty() {
            "[]".to_string()
        } else {
            format!("['{a}']")
        }
    };
    let (nbd, nvmf, iscsi) = listen;
    let mut text = format!(
        "[reactor]\ncores=[{core}]\npin={pin}\nwait='interrupt'\n[nbd]\nlisten={}\n[nvmf]\nlisten={}\n[iscsi]\nlisten={}\n[control]\nsocket=''\n",
        list(nbd),
        list(nvmf),
        list(iscsi),
    );
    for (dir, name) in views {
        // Only the identity here: the view's backend reads the history itself when it opens.
        let meta = store::read_meta(dir).with_context(|| format!("reading {}", dir.display()))?;
        let (seq, time, bookmark) = &point;
        let mut view = format!(
            "dir={}\nsandbox={sandbox}\n",
            toml_str(&dir.display().to_string())
        );
        match (seq, time, bookmark) {
            (Some(s), _, _) => view.push_str(&format!("seq={s}\n")),
            (_, Some(t), _) => view.push_str(&format!("time={t}\n")),
            (_, _, Some(b)) => view.push_str(&format!("bookmark={}\n", toml_str(b))),
            _ => anyhow::bail!("give --time, --seq or --bookmark"),
        }
        text.push_str(&format!(
            "[[volume]]\nname={}\nbackend='cdp-view'\nsize={}\nblock_size={}\n[volume.view]\n{view}",
            toml_str(name),
            meta.size,
            meta.block_size,
        ));
    }
    Config::from_toml(&text).context("the view's configuration")
}

/// The time a bookmark names in every directory of a group (refused when they differ or one
/// lacks it).
fn bookmark_time(dirs: &[PathBuf], b: &str) -> Result<u64> {
    let mut at = None;
    for d in dirs {
        let t = twinblk::layer::cdp::bookmark::load(d)
            .map_err(anyhow::Error::msg)?
            .get(b)
            .copied()
            .with_context(|| format!("{}: no bookmark named {b:?}", d.display()))?;
        anyhow::ensure!(
            at.is_none_or(|a| a == t),
            "bookmark {b:?} names different times in the volumes given"
        );
        at = Some(t);
    }
    at.context("no volume given")
}

/// With `Some(pid)`: a thread that sends this process SIGINT (its clean stop, as Ctrl-C) once
/// `pid` is no longer its parent, i.e. the daemon that started it is gone, even killed.
fn stop_with_parent(parent: Option<u32>) {
    let Some(pid) = parent else { return };
    let _ = std::thread::Builder::new()
        .name("parent-watch".into())
        .spawn(move || {
            // SAFETY: getppid has no preconditions.
            while unsafe { libc::getppid() } as u32 == pid {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            eprintln!("the daemon that started this (pid {pid}) is gone: stopping");
            // SAFETY: getpid has no preconditions; kill signals this process.
            unsafe { libc::kill(libc::getpid(), libc::SIGINT) };
        });
}

/// `s` as a TOML basic string.
fn toml_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if c.is_control() => o.push_str(&format!("\\u{:04X}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn cdp(cmd: CdpCmd) -> Result<()> {
    use twinblk::layer::cdp::{pit, store};
    match cmd {
        CdpCmd::View {
            dir,
            time,
            seq,
            bookmark,
            sandbox,
            name,
            nbd,
            nvmf,
            iscsi,
            core,
            no_pin,
            parent,
        } => {
            stop_with_parent(parent);
            let t = std::time::Instant::now();
            anyhow::ensure!(
                dir.len() == name.len(),
                "give one --name per --dir ({} and {})",
                dir.len(),
                name.len()
            );
            let group = dir.len() > 1;
            let mut point = (seq, time, bookmark);
            if group {
                anyhow::ensure!(
                    point.0.is_none(),
                    "--seq names a point of one volume; view a group with --time or --bookmark"
                );
                for (i, n) in name.iter().enumerate() {
                    anyhow::ensure!(
                        !name[..i].contains(n),
                        "--name {n:?} is given twice: each volume of the view needs its own"
                    );
                }
                // One time for every volume (as a group restore cuts it), each window
                // checked before anything serves.
                if let Some(b) = point.2.take() {
                    point.1 = Some(bookmark_time(&dir, &b)?);
                }
                let at = point.1.context("give --time or --bookmark")?;
                for d in &dir {
                    let h = store::load(d, store::Load::ReadOnly)
                        .with_context(|| format!("reading {}", d.display()))?;
                    pit::resolve(&h, pit::Point::Time(at))
                        .with_context(|| format!("{}", d.display()))?;
                }
            }
            // A point the view's configuration cannot carry (its integers are signed 64-bit)
            // is past every history's end: refused as the window refuses it.
            let past = |v: Option<u64>| v.is_some_and(|x| i64::try_from(x).is_err());
            if past(point.0) || past(point.1) {
                let p = match point.0 {
                    Some(s) => pit::Point::Seq(s),
                    None => pit::Point::Time(point.1.unwrap_or(u64::MAX)),
                };
                for d in &dir {
                    let h = store::load(d, store::Load::ReadOnly)
                        .with_context(|| format!("reading {}", d.display()))?;
                    pit::resolve(&h, p).with_context(|| format!("{}", d.display()))?;
                }
                anyhow::bail!("the point is past what a history can hold (at most 2^63 - 1)");
            }
            let views: Vec<(PathBuf, String)> = dir.iter().cloned().zip(name).collect();
            let cfg = view_config(
                &views,
                point,
                sandbox,
                (&nbd, &nvmf, &iscsi),
                (core, !no_pin),
            )?;
            for (d, n) in &views {
                eprintln!(
                    "cdp view {n} of {} ({}), configured in {:.3} s",
                    d.display(),
                    if sandbox { "sandbox" } else { "read-only" },
                    t.elapsed().as_secs_f64()
                );
            }
            serve(cfg)
        }
        CdpCmd::Window { dir } => {
            for d in dir {
                let h = store::load(&d, store::Load::ReadOnly)
                    .with_context(|| format!("reading {}", d.display()))?;
                println!("{}: {}", d.display(), pit::window(&h));
                if let Some(c) = &h.cut {
                    println!("  the log ends early: {c}");
                }
                match twinblk::layer::cdp::rollback::load_marker(&d) {
                    Ok(Some(m)) => println!("  {}", m.describe()),
                    Ok(None) => {}
                    Err(e) => println!("  rollback marker: {e}"),
                }
            }
            Ok(())
        }
        CdpCmd::Restore {
            dir,
            out,
            time,
            seq,
            bookmark,
            parent,
        } => {
            stop_with_parent(parent);
            anyhow::ensure!(
                dir.len() == out.len(),
                "give one --out per --dir ({} and {})",
                dir.len(),
                out.len()
            );
            anyhow::ensure!(
                seq.is_none() || dir.len() == 1,
                "--seq names a point of one volume; restore a group with --time"
            );
            let time = match &bookmark {
                None => time,
                Some(b) => Some(bookmark_time(&dir, b)?),
            };
            let point = match (time, seq) {
                (Some(t), _) => pit::Point::Time(t),
                (None, Some(s)) => pit::Point::Seq(s),
                (None, None) => anyhow::bail!("give --time, --seq or --bookmark"),
            };
            // No output in a history's directory (any of the group's).
            let dirs: Vec<&std::path::Path> = dir.iter().map(|d| d.as_path()).collect();
            for o in &out {
                pit::check_out(o, &dirs)?;
            }
            // Every history is read and the point checked before anything is written.
            let mut hs = Vec::new();
            for d in &dir {
                let h = store::load(d, store::Load::ReadOnly)
                    .with_context(|| format!("reading {}", d.display()))?;
                pit::resolve(&h, point).with_context(|| format!("{}", d.display()))?;
                hs.push(h);
            }
            // SIGINT or SIGTERM (`cdp_view_close`, a daemon that stops) stops the restore at
            // its next progress report; nothing is named `--out` until every volume is whole.
            use std::sync::atomic::{AtomicBool, Ordering};
            let stop = std::sync::Arc::new(AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                signal_hook::flag::register(sig, stop.clone())?;
            }
            let mut done = Vec::new();
            for (h, o) in hs.iter().zip(&out) {
                let r = pit::restore_unnamed(h, point, o, |p| {
                    match p {
                        pit::Progress::Base { copied, total } => eprint!(
                            "\r{}: {} of {} MiB of the base copy",
                            o.display(),
                            copied >> 20,
                            total >> 20
                        ),
                        pit::Progress::Records { applied, total } => {
                            eprint!("\r{}: {applied}/{total} records", o.display())
                        }
                    }
                    if stop.load(Ordering::Relaxed) {
                        std::ops::ControlFlow::Break(())
                    } else {
                        std::ops::ControlFlow::Continue(())
                    }
                })
                .with_context(|| format!("restoring {} into {}", h.dir.display(), o.display()))?;
                eprintln!();
                done.push((r, h));
            }
            // Named last, all together; one that cannot be named takes the others back.
            let mut named: Vec<&PathBuf> = Vec::new();
            for (r, h) in done {
                let (seq, o) = (r.seq(), r.out().to_path_buf());
                if let Err(e) = r.finish() {
                    for n in named {
                        let _ = std::fs::remove_file(n);
                    }
                    return Err(e).with_context(|| format!("naming {}", o.display()));
                }
                let o = out.iter().find(|x| **x == o).expect("one of --out");
                named.push(o);
                println!("{}: sequence {seq} of {}", o.display(), h.dir.display());
            }
            Ok(())
        }
        CdpCmd::Rollback {
            config,
            volume,
            group,
            time,
            seq,
            bookmark,
            all,
            undo,
            confirm,
            yield_to_peer,
        } => rollback_cmd(
            &config,
            volume,
            group,
            (time, seq, bookmark),
            all,
            undo,
            confirm,
            yield_to_peer,
        ),
    }
}

fn load(path: Option<&PathBuf>) -> Result<Config> {
    match path {
        None => Ok(Config::default()),
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            Config::from_toml(&text).with_context(|| format!("in {}", p.display()))
        }
    }
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().cmd {
        Cmd::Demo {
            dir,
            nbd_port,
            repl_port,
            nvmf_port,
            iscsi_port,
            witness_port,
            size,
        } => {
            twinblk::control::config::parse_size(&size).map_err(anyhow::Error::msg)?;
            twinblk::daemon::demo::run(twinblk::daemon::demo::DemoOptions {
                dir,
                nbd_port,
                repl_port,
                nvmf_port,
                iscsi_port,
                witness_port,
                size,
                exe: std::env::current_exe().context("finding the twinblk binary")?,
            })
        }
        Cmd::Witness {
            listen,
            key_file,
            state,
            tie_grace_ms,
            start_grace_ms,
        } => {
            let key = twinblk_witness::Key::from_file(&key_file)
                .map_err(|e| anyhow::anyhow!("witness key: {e}"))?;
            let mut w = twinblk_witness::Witness::open(twinblk_witness::Config {
                listen,
                state,
                key,
                tie_grace: std::time::Duration::from_millis(tie_grace_ms),
                start_grace: std::time::Duration::from_millis(start_grace_ms),
                init: true,
            })?;
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                signal_hook::flag::register(sig, std::sync::Arc::clone(&stop))?;
            }
            println!("twinblk witness on udp://{}", w.local_addr()?);
            use std::io::Write;
            let _ = std::io::stdout().flush();
            w.serve(&stop)?;
            Ok(())
        }
        Cmd::Cdp { cmd } => cdp(cmd),
        Cmd::CheckConfig { config } => {
            let c = load(Some(&config))?;
            // The file may be meant for another machine: a RAM volume this one could not hold
            // is a warning here; `serve` refuses it.
            for v in c
                .volumes
                .iter()
                .filter(|v| v.backend == twinblk::control::config::Backend::Malloc)
            {
                if let Err(e) = twinblk::bdev::malloc::check_fits_memory(v.size.0) {
                    eprintln!(
                        "warning: volume {}: {e}; twinblk serve refuses it on this machine",
                        v.name
                    );
                }
            }
            print!("{}", toml::to_string_pretty(&c)?);
            Ok(())
        }
        Cmd::Serve {
            config,
            nbd_listen,
            nvmf_listen,
            cores,
            wait,
            control_socket,
        } => {
            let mut cfg = load(config.as_ref())?;
            if !nbd_listen.is_empty() {
                cfg.nbd.listen = nbd_listen;
            }
            if !nvmf_listen.is_empty() {
                cfg.nvmf.listen = nvmf_listen;
            }
            if !cores.is_empty() {
                cfg.reactor.cores = cores;
            }
            if let Some(w) = wait {
                cfg.reactor.wait = w;
            }
            if let Some(s) = control_socket {
                cfg.control.socket = PathBuf::from(s);
            }
            cfg.validate()?;
            serve(cfg)
        }
    }
}

fn serve(cfg: Config) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    // Register before starting so a signal during start-up is not lost.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    let mut daemon = twinblk::Daemon::start(&cfg).context("starting twinblk")?;
    let exports = cfg.effective_exports();
    println!(
        "twinblk {} serving {} volume(s) on {} reactor(s) (cores {:?}, wait {:?})",
        env!("CARGO_PKG_VERSION"),
        cfg.volumes.len(),
        cfg.reactor.cores.len(),
        cfg.reactor.cores,
        cfg.reactor.wait
    );
    let subsystems = cfg.effective_subsystems();
    for (proto, addr) in daemon.listeners() {
        if proto == Proto::Nvmf {
            for s in &subsystems {
                println!("  nvme+tcp://{addr}/{}", s.nqn);
                println!(
                    "    twinblk-nvme perf --addr {addr} --nqn {} --queues 4 --qd 32 --rw randrw --bs 4k --seconds 5 --verify",
                    s.nqn
                );
                println!(
                    "    nvme connect -t tcp -a {} -s {} -n {}",
                    addr.ip(),
                    addr.port(),
                    s.nqn
                );
            }
        }
        if proto == Proto::Iscsi {
            for t in cfg.effective_iscsi_targets() {
                println!("  iscsi://{addr}/{}/0", t.iqn);
                println!("    iscsi-inq iscsi://{addr}/{}/0", t.iqn);
                println!(
                    "    iscsiadm -m discovery -t st -p {addr} && iscsiadm -m node -T {} -p {addr} --login",
                    t.iqn
                );
            }
        }
        if proto == Proto::Nbd {
            for e in &exports {
                let uri = format!("nbd://{addr}/{}", e.name);
                println!("  {uri}");
                println!("    nbdinfo {uri}");
                println!("    qemu-img info {uri}");
                println!(
                    "    fio --name=t --ioengine=nbd --uri={uri} --rw=randrw --bs=4k --iodepth=32 --size=256M --time_based --runtime=10"
                );
            }
        }
    }
    if !cfg.control.socket.as_os_str().is_empty() {
        println!(
            "  control: {} (twinblk-ctl --socket {} status)",
            cfg.control.socket.display(),
            cfg.control.socket.display()
        );
    }
    if let Some(m) = daemon.metrics_addr() {
        println!("  metrics: http://{m}/metrics");
    }
    println!("Ctrl-C stops it (in-flight I/O is finished first).");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "stopping");
    }
    daemon.stop();
    tracing::info!("stopped");
    Ok(())
}
