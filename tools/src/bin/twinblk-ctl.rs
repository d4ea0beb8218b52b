//! `twinblk-ctl`: the operator's command line for twinblk sites. `status` asks both sites (and
//! reads the witness's state file) and shows one screen per volume group; `takeover` wraps
//! `mirror_takeover`; `volume`, `export`, `nvmf` and `iscsi` make run-time changes
//! (`ctl::admin`); `call` (or a bare method name, the old form) sends one raw JSON-RPC
//! method. The logic is in `twinblk_tools::ctl`; exit codes are `ctl::exit` (docs/control.md).

use clap::{Parser, Subcommand};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;
use twinblk_tools::ctl::{self, SiteArg, admin, exit};

/// Operate twinblk sites through their control sockets.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// A site's control socket, `PATH` or `NAME=PATH`; repeat for each site (`status` asks
    /// every one given; the other commands use the first).
    #[arg(long = "socket", global = true)]
    sockets: Vec<SiteArg>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Parameters as a JSON value (old form: `twinblk-ctl METHOD --params JSON`).
    #[arg(long, global = true)]
    params: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Both sites' state per volume group and volume; exit 0 only when everything is in sync.
    Status {
        /// The witness's state file, read (never written) for its holder and epoch per group.
        #[arg(long)]
        witness_state: Option<PathBuf>,
        /// Refresh every SECONDS until interrupted.
        #[arg(long, value_name = "SECONDS", value_parser = seconds)]
        watch: Option<f64>,
        /// With --watch: stop after this many screens (the exit code is the last one's).
        #[arg(long)]
        count: Option<u64>,
    },
    /// Ask the site (the first --socket) to take VOLUME over through the witness: it then
    /// serves alone, and writes its peer acknowledged but never sent are lost.
    Takeover {
        /// The volume.
        volume: String,
        /// Confirm that writes acknowledged by the other site and not yet copied here may be
        /// lost (required).
        #[arg(long)]
        accept_data_loss: bool,
        /// How long to wait for the witness's answer, seconds.
        #[arg(long, default_value_t = 10.0, value_parser = seconds)]
        wait: f64,
    },
    /// Move the leadership of VOLUME (or every volume of --group) to SITE with no data
    /// copied and no I/O error (`mirror_switchover` on the first --socket; either site may
    /// be asked). Exit 0 done (or SITE leads already), 3 not in sync, 10 not completed
    /// (rolled back or no answer within --wait), 1 refused, 2 usage, 4 unreachable.
    Switchover {
        /// The volume (or give --group).
        volume: Option<String>,
        /// Every volume of this group instead.
        #[arg(long)]
        group: Option<String>,
        /// The site to lead (its `mirror.site` name).
        #[arg(long)]
        to: String,
        /// How long to wait for it, seconds.
        #[arg(long, default_value_t = 10.0, value_parser = seconds)]
        wait: f64,
    },
    /// Pause or resume this site's resync of VOLUME (its last pass, which holds writes, is
    /// never paused), or set its rate (`mirror_resync`).
    Resync {
        /// The volume.
        volume: String,
        /// `pause`, `resume`, or `rate` (with BYTES_PER_S; 0: the configured rate).
        action: ResyncAction,
        /// For `rate`: bytes per second (at least 1 MiB/s, or 0).
        bytes_per_s: Option<u64>,
    },
    /// Compare the two sites' replicas of VOLUME region by region (CRC32C of each site's own
    /// replica, `volume_checksums`), throttled; exit 0 when identical, 7 when regions differ
    /// (listed), 3 when the sites are not in sync. Needs both sites' --socket.
    Verify {
        /// The volume.
        volume: String,
        /// Region size in bytes (a multiple of the volume's block size).
        #[arg(long, default_value_t = 1 << 20)]
        region: u64,
        /// Bytes per second read at each site (0: no limit).
        #[arg(long, value_name = "BYTES_PER_S", default_value_t = 100 << 20)]
        rate: u64,
    },
    /// The hosts connected to each site given (`host_list`): per volume, each connection's
    /// protocol, reactor, peer address, queue, requests in flight, host identity and target.
    Hosts {
        /// Only the connections reaching this volume.
        volume: Option<String>,
    },
    /// The DR drill (docs/drill.md): `run CONFIG` fails a site under load and writes a signed
    /// report; `verify-history` and `verify-report` check signatures.
    Drill {
        #[command(subcommand)]
        cmd: DrillCmd,
    },
    /// Continuous data protection at the site (the first --socket): `status` (each journal's
    /// window in UTC and as the `--time` that `twinblk cdp restore` and `twinblk cdp view`
    /// take, its history against the retention target, DEGRADED when its journal stopped),
    /// `bookmark`, `bookmarks`, `unbookmark`, views and restores run by the daemon: `view`
    /// (of a volume or a `--group` at one time), `close`, `restore`, `jobs`, and `enable` /
    /// `disable` to switch a volume's journal on or off while it serves.
    Cdp {
        #[command(subcommand)]
        cmd: CdpCmd,
    },
    /// Volumes created and deleted at run time (`volume_create`, `volume_delete`) and
    /// listed (`volume_list`). Run-time changes last until the daemon stops.
    Volume {
        #[command(subcommand)]
        cmd: admin::VolumeCmd,
    },
    /// NBD exports added and removed at run time (`nbd_export_add`, `nbd_export_remove`) and
    /// listed (`export_list`).
    Export {
        #[command(subcommand)]
        cmd: admin::ExportCmd,
    },
    /// NVMe-oF subsystems, namespaces and allowed hosts changed at run time.
    Nvmf {
        #[command(subcommand)]
        cmd: admin::NvmfCmd,
    },
    /// iSCSI targets and LUNs added and removed at run time.
    Iscsi {
        #[command(subcommand)]
        cmd: admin::IscsiCmd,
    },
    /// Send one JSON-RPC method and print its result (docs/control.md lists them).
    Call {
        /// The method, e.g. mirror_status.
        method: String,
        /// Parameters as a JSON value.
        params: Option<String>,
    },
    /// Old form: a bare method name, e.g. `twinblk-ctl mirror_status`.
    #[command(external_subcommand)]
    Raw(Vec<String>),
}

/// `twinblk-ctl drill` verbs.
#[derive(Subcommand)]
enum DrillCmd {
    /// Run the drill described by CONFIG (TOML): exit 0 when every target was met, 8 when the
    /// drill ran and a target was missed (the report says which).
    Run {
        /// The drill's configuration file.
        config: PathBuf,
    },
    /// Check every line of a drill history (signatures and the chain between lines).
    VerifyHistory {
        /// The history file (JSON lines).
        file: PathBuf,
        /// The HMAC key file the drills signed with.
        #[arg(long)]
        key: PathBuf,
    },
    /// Check a drill report's signature.
    VerifyReport {
        /// The report (JSON).
        file: PathBuf,
        /// The HMAC key file the drill signed with.
        #[arg(long)]
        key: PathBuf,
    },
}

/// `twinblk-ctl cdp` verbs.
#[derive(Subcommand)]
enum CdpCmd {
    /// Each journal's window, history and counters (`cdp_status`).
    Status {
        /// Only this volume.
        volume: Option<String>,
    },
    /// Name the current moment of a volume, or of every volume of a group at one time
    /// (`cdp_bookmark`); it stays restorable past retention until deleted.
    Bookmark {
        /// The bookmark's name (1 to 64 of A-Z a-z 0-9 . _ -).
        name: String,
        #[command(flatten)]
        target: CdpTarget,
        /// Move a bookmark of that name to now (without it, an existing name is refused).
        #[arg(long)]
        replace: bool,
    },
    /// The bookmarks of a volume or a group (`cdp_bookmarks`).
    Bookmarks {
        #[command(flatten)]
        target: CdpTarget,
    },
    /// Delete a bookmark (`cdp_bookmark_delete`): retention may then consolidate past it.
    Unbookmark {
        /// The bookmark's name.
        name: String,
        #[command(flatten)]
        target: CdpTarget,
    },
    /// Serve a point in time of VOLUME without copying it, as a child process of the daemon
    /// (`cdp_view_open`): read-only, or a sandbox whose writes are discarded when it closes.
    /// `--group G` (with --time or --bookmark): every volume of the group at the same moment,
    /// in one child process, each under its own volume name.
    View {
        /// The volume (or give --group).
        #[arg(required_unless_present = "group", conflicts_with = "group")]
        volume: Option<String>,
        /// Every volume of this group, at one time.
        #[arg(long)]
        group: Option<String>,
        #[command(flatten)]
        point: CdpPoint,
        /// Writable, writes kept in RAM and discarded at close.
        #[arg(long)]
        sandbox: bool,
        /// The view's name (NBD export, NVMe subsystem and iSCSI target suffix); a group's
        /// view uses the volumes' names.
        #[arg(long, conflicts_with = "group")]
        name: Option<String>,
        /// NBD listen address (host:port).
        #[arg(long)]
        nbd: Option<String>,
        /// NVMe/TCP listen address.
        #[arg(long)]
        nvmf: Option<String>,
        /// iSCSI listen address.
        #[arg(long)]
        iscsi: Option<String>,
    },
    /// Stop a view or a restore started through the daemon (`cdp_view_close`).
    Close {
        /// Its id (from `cdp view`, `cdp restore` or `cdp jobs`).
        id: u64,
    },
    /// Restore a point in time of VOLUME into a new file, as a child process of the daemon
    /// (`cdp_restore`); follow it with `cdp jobs`.
    Restore {
        /// The volume.
        volume: String,
        #[command(flatten)]
        point: CdpPoint,
        /// The new file (absolute path, on the daemon's machine; must not exist).
        #[arg(long)]
        out: String,
    },
    /// The views and restores started through the daemon, with their state (`cdp_jobs`).
    Jobs,
    /// Switch continuous data protection on for VOLUME while it serves (`cdp_enable`): the
    /// whole volume is journaled again, then a gap record; a history already in the directory
    /// resumes (points while CDP was off are refused). Lasts until the daemon stops.
    Enable {
        /// The volume (a mirrored one's layer goes under the mirror, at the site of the first
        /// --socket only).
        volume: String,
        /// The journal directory (absolute; default the volume's [volume.cdp] dir).
        #[arg(long)]
        dir: Option<String>,
        /// Bytes per segment, e.g. 64MiB.
        #[arg(long)]
        segment_size: Option<String>,
        /// Keep at least this much history, e.g. 12h.
        #[arg(long)]
        retention_age: Option<String>,
        /// Keep at most about this many bytes of segments, e.g. 10GiB.
        #[arg(long)]
        retention_bytes: Option<String>,
        /// Write segments with zeroes ahead of use.
        #[arg(long)]
        prezero: bool,
        /// When a record is durable: "append" (each append, the default) or "flush" (the
        /// volume's flushes and FUA writes sync the journal).
        #[arg(long, value_parser = ["append", "flush"])]
        sync: Option<String>,
        /// The volume's CDP group (default its [[volume]] group, else its name).
        #[arg(long)]
        group: Option<String>,
        /// Answer after at most this many seconds of journaling the volume again (default
        /// 120; 0: at once); `cdp status` shows the catch-up until the history is whole.
        #[arg(long, value_parser = seconds)]
        wait: Option<f64>,
    },
    /// Switch continuous data protection off for VOLUME while it serves (`cdp_disable`): the
    /// history ends at a last time mark and stays readable by views and restores.
    Disable {
        /// The volume.
        volume: String,
    },
}

/// A point in time: one of --time, --seq, --bookmark.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct CdpPoint {
    /// Site time in ns since the epoch.
    #[arg(long)]
    time: Option<u64>,
    /// Sequence number.
    #[arg(long)]
    seq: Option<u64>,
    /// A bookmark.
    #[arg(long)]
    bookmark: Option<String>,
}

impl CdpPoint {
    fn params(&self) -> Value {
        match (self.time, self.seq, &self.bookmark) {
            (Some(t), _, _) => serde_json::json!({"time_ns": t}),
            (_, Some(s), _) => serde_json::json!({"seq": s}),
            (_, _, Some(b)) => serde_json::json!({"bookmark": b}),
            _ => unreachable!("clap requires one"),
        }
    }
}

/// One volume or one group.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct CdpTarget {
    /// A volume.
    #[arg(long)]
    volume: Option<String>,
    /// Every volume of a group.
    #[arg(long)]
    group: Option<String>,
}

impl CdpTarget {
    fn target(&self) -> ctl::cdp::Target<'_> {
        match (&self.volume, &self.group) {
            (Some(v), _) => ctl::cdp::Target::Volume(v),
            (None, Some(g)) => ctl::cdp::Target::Group(g),
            (None, None) => unreachable!("clap requires one"),
        }
    }
}

/// What `twinblk-ctl resync` does.
#[derive(Clone, Copy, clap::ValueEnum)]
enum ResyncAction {
    Pause,
    Resume,
    Rate,
}

fn main() {
    std::process::exit(run(Cli::parse()));
}

fn first_socket(cli: &Cli) -> PathBuf {
    cli.sockets
        .first()
        .map(|s| s.socket.clone())
        .unwrap_or_else(|| PathBuf::from("/run/twinblk/twinblk.sock"))
}

fn run(cli: Cli) -> i32 {
    match &cli.cmd {
        Cmd::Status {
            witness_state,
            watch,
            count,
        } => {
            let mut sites = cli.sockets.clone();
            if sites.is_empty() {
                sites.push("/run/twinblk/twinblk.sock".parse().expect("a path"));
            }
            let mut n = 0u64;
            loop {
                let st = ctl::status(&sites, witness_state.as_deref());
                if cli.json {
                    // One JSON document per screen (one line each with --watch).
                    let text = if watch.is_some() {
                        serde_json::to_string(&st)
                    } else {
                        serde_json::to_string_pretty(&st)
                    };
                    println!("{}", text.unwrap_or_default());
                } else {
                    if watch.is_some() {
                        print!("\x1b[2J\x1b[H");
                    }
                    print!("{}", ctl::render::status(&st));
                }
                n += 1;
                let Some(secs) = watch else {
                    return st.exit_code();
                };
                if count.is_some_and(|c| n >= c) {
                    return st.exit_code();
                }
                std::thread::sleep(Duration::from_secs_f64(secs.clamp(0.05, 86_400.0)));
            }
        }
        Cmd::Switchover {
            volume,
            group,
            to,
            wait,
        } => {
            let target = match (volume, group) {
                (Some(v), None) => ("volume", v.as_str()),
                (None, Some(g)) => ("group", g.as_str()),
                _ => {
                    eprintln!("twinblk-ctl: switchover needs a VOLUME or --group GROUP (not both)");
                    return exit::USAGE;
                }
            };
            let socket = first_socket(&cli);
            let wait = Duration::from_secs_f64(wait.clamp(0.1, 600.0));
            match ctl::switchover(&socket, target, to, wait) {
                Err((code, m)) => {
                    eprintln!("twinblk-ctl: switchover: {m}");
                    code
                }
                Ok(r) => {
                    if cli.json {
                        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
                    } else {
                        for v in r["volumes"].as_array().into_iter().flatten() {
                            if v["changed"] == true {
                                println!(
                                    "{}: {} leads now (term {}; was {})",
                                    v["volume"].as_str().unwrap_or(""),
                                    v["leader"].as_str().unwrap_or(""),
                                    v["term"],
                                    v["previous_leader"].as_str().unwrap_or("")
                                );
                            } else {
                                println!(
                                    "{}: {} leads already (term {}); nothing done",
                                    v["volume"].as_str().unwrap_or(""),
                                    v["leader"].as_str().unwrap_or(""),
                                    v["term"]
                                );
                            }
                        }
                    }
                    exit::OK
                }
            }
        }
        Cmd::Takeover {
            volume,
            accept_data_loss,
            wait,
        } => {
            if !accept_data_loss {
                eprintln!(
                    "twinblk-ctl: takeover makes this site serve {volume} alone; writes the other site acknowledged and never sent here are lost. Run it only when the other site is down for good, with --accept-data-loss."
                );
                return exit::REFUSED;
            }
            let socket = first_socket(&cli);
            match ctl::takeover(&socket, volume, Duration::from_secs_f64(wait.max(0.0))) {
                Err(e) => {
                    eprintln!("twinblk-ctl: {e}");
                    e.exit_code()
                }
                Ok(r) => {
                    if cli.json {
                        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
                    } else if let Some(why) = &r.refused {
                        if r.state == "up" {
                            println!(
                                "{}: nothing done: this site still sees its peer (state up)",
                                r.volume
                            );
                        } else {
                            println!("{}: nothing done: {why}", r.volume);
                        }
                    } else if r.granted {
                        println!(
                            "{}: the witness granted this site the volume (epoch {}); it serves alone now (state {})",
                            r.volume, r.witness["epoch"], r.state
                        );
                    } else if !r.answered {
                        println!(
                            "{}: no answer from the witness within {wait} s (state {}); the request stands",
                            r.volume, r.state
                        );
                    } else if r.state == "up" {
                        println!(
                            "{}: nothing done: this site still sees its peer (state up)",
                            r.volume
                        );
                    } else if r.witness_answer == "granted" {
                        println!(
                            "{}: the witness granted the group (epoch {}), but this volume is {} here after {wait} s: see `twinblk-ctl status` (a replica missing a grant since it was last in sync stays fenced)",
                            r.volume, r.witness["epoch"], r.state
                        );
                    } else {
                        println!(
                            "{}: not granted: the witness answered {} (holder {}, epoch {}); state {}",
                            r.volume,
                            r.witness_answer,
                            r.witness["holder"],
                            r.witness["epoch"],
                            r.state
                        );
                    }
                    if r.granted {
                        exit::OK
                    } else {
                        exit::NOT_GRANTED
                    }
                }
            }
        }
        Cmd::Resync {
            volume,
            action,
            bytes_per_s,
        } => {
            let params = match (action, bytes_per_s) {
                (ResyncAction::Pause, None) => serde_json::json!({"volume": volume, "pause": true}),
                (ResyncAction::Resume, None) => {
                    serde_json::json!({"volume": volume, "pause": false})
                }
                (ResyncAction::Rate, Some(r)) => {
                    serde_json::json!({"volume": volume, "rate_bytes_per_s": r})
                }
                (ResyncAction::Rate, None) => {
                    eprintln!(
                        "twinblk-ctl: resync VOLUME rate BYTES_PER_S (0: the configured rate)"
                    );
                    return exit::USAGE;
                }
                (_, Some(_)) => {
                    eprintln!("twinblk-ctl: only `rate` takes a number");
                    return exit::USAGE;
                }
            };
            raw(&cli, "mirror_resync", Some(&params.to_string()))
        }
        Cmd::Verify {
            volume,
            region,
            rate,
        } => {
            let opts = ctl::verify::VerifyOpts {
                volume: volume.clone(),
                region: *region,
                rate: *rate,
                progress: true,
            };
            match ctl::verify::verify(&cli.sockets, &opts) {
                Err(e) => {
                    eprintln!("twinblk-ctl: verify {volume}: {e}");
                    e.exit_code()
                }
                Ok(r) => {
                    if cli.json {
                        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
                    } else {
                        print!("{}", ctl::verify::render(&r));
                    }
                    r.exit_code()
                }
            }
        }
        Cmd::Hosts { volume } => {
            let mut sites = cli.sockets.clone();
            if sites.is_empty() {
                sites.push("/run/twinblk/twinblk.sock".parse().expect("a path"));
            }
            let (h, code) = ctl::verify::hosts(&sites, volume.as_deref());
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&h).unwrap_or_default());
            } else {
                print!("{}", ctl::verify::render_hosts(&h));
            }
            code
        }
        Cmd::Drill { cmd } => drill(&cli, cmd),
        Cmd::Cdp { cmd } => cdp(&cli, cmd),
        Cmd::Volume { cmd } => admin::run(&first_socket(&cli), cli.json, &admin::Cmd::Volume(cmd)),
        Cmd::Export { cmd } => admin::run(&first_socket(&cli), cli.json, &admin::Cmd::Export(cmd)),
        Cmd::Nvmf { cmd } => admin::run(&first_socket(&cli), cli.json, &admin::Cmd::Nvmf(cmd)),
        Cmd::Iscsi { cmd } => admin::run(&first_socket(&cli), cli.json, &admin::Cmd::Iscsi(cmd)),
        Cmd::Call { method, params } => raw(&cli, method, params.as_deref()),
        Cmd::Raw(words) => {
            let [method, rest @ ..] = &words[..] else {
                return exit::USAGE;
            };
            // The old form's `--params JSON` may follow the method.
            let params = match rest {
                [] => None,
                [flag, p] if flag == "--params" => Some(p.as_str()),
                [p] if p.starts_with("--params=") => Some(&p["--params=".len()..]),
                _ => {
                    eprintln!("twinblk-ctl: unexpected arguments after {method}: {rest:?}");
                    return exit::USAGE;
                }
            };
            raw(&cli, method, params)
        }
    }
}

fn cdp(cli: &Cli, cmd: &CdpCmd) -> i32 {
    use ctl::cdp;
    let socket = first_socket(cli);
    let (r, render): (_, fn(&Value) -> String) = match cmd {
        CdpCmd::Status { volume } => (cdp::status(&socket, volume.as_deref()), cdp::render_status),
        CdpCmd::Bookmark {
            name,
            target,
            replace,
        } => (
            cdp::bookmark(&socket, &target.target(), name, *replace),
            |v: &Value| {
                format!(
                    "bookmark {} at {} (--time {}) on {}\n",
                    v["name"].as_str().unwrap_or("?"),
                    cdp::utc(v["time_ns"].as_u64().unwrap_or(0)),
                    v["time_ns"],
                    v["volumes"]
                )
            },
        ),
        CdpCmd::Bookmarks { target } => (
            cdp::bookmarks(&socket, &target.target()),
            cdp::render_bookmarks,
        ),
        CdpCmd::Unbookmark { name, target } => (
            cdp::unbookmark(&socket, &target.target(), name),
            |v: &Value| {
                format!(
                    "bookmark {} deleted on {}\n",
                    v["name"].as_str().unwrap_or("?"),
                    v["volumes"]
                )
            },
        ),
        CdpCmd::View {
            volume,
            group,
            point,
            sandbox,
            name,
            nbd,
            nvmf,
            iscsi,
        } => {
            let mut p = point.params();
            match (volume, group) {
                (Some(v), _) => {
                    p["volume"] = Value::from(v.as_str());
                    p["name"] = Value::from(name.as_deref().unwrap_or("view"));
                }
                (None, Some(g)) => p["group"] = Value::from(g.as_str()),
                (None, None) => unreachable!("clap requires one"),
            }
            p["sandbox"] = Value::from(*sandbox);
            for (k, a) in [("nbd", nbd), ("nvmf", nvmf), ("iscsi", iscsi)] {
                if let Some(a) = a {
                    p[k] = Value::from(a.as_str());
                }
            }
            (ctl::call(&socket, "cdp_view_open", p), cdp::render_view)
        }
        CdpCmd::Close { id } => (
            ctl::call(&socket, "cdp_view_close", serde_json::json!({"id": id})),
            |v: &Value| format!("{} stopped (exit {})\n", v["id"], v["exit"]),
        ),
        CdpCmd::Restore { volume, point, out } => {
            let mut p = point.params();
            p["volume"] = Value::from(volume.as_str());
            p["out"] = Value::from(out.as_str());
            (ctl::call(&socket, "cdp_restore", p), |v: &Value| {
                format!(
                    "restore {} of {} into {} started (pid {}): follow it with `twinblk-ctl cdp jobs`\n",
                    v["id"],
                    v["volume"].as_str().unwrap_or("?"),
                    v["out"].as_str().unwrap_or("?"),
                    v["pid"]
                )
            })
        }
        CdpCmd::Jobs => (
            ctl::call(&socket, "cdp_jobs", Value::Null),
            cdp::render_jobs,
        ),
        CdpCmd::Enable {
            volume,
            dir,
            segment_size,
            retention_age,
            retention_bytes,
            prezero,
            sync,
            group,
            wait,
        } => {
            let mut p = serde_json::json!({"volume": volume});
            for (k, v) in [
                ("dir", dir),
                ("segment_size", segment_size),
                ("retention_age", retention_age),
                ("retention_bytes", retention_bytes),
                ("sync", sync),
                ("group", group),
            ] {
                if let Some(v) = v {
                    p[k] = Value::from(v.as_str());
                }
            }
            if *prezero {
                p["prezero"] = Value::from(true);
            }
            if let Some(w) = wait {
                p["wait"] = Value::from(*w);
            }
            (
                cdp::with_enable_progress(&socket, volume, || ctl::call(&socket, "cdp_enable", p)),
                cdp::render_enable,
            )
        }
        CdpCmd::Disable { volume } => (
            ctl::call(
                &socket,
                "cdp_disable",
                serde_json::json!({"volume": volume}),
            ),
            cdp::render_disable,
        ),
    };
    match r {
        Err(e) => {
            eprintln!("twinblk-ctl: {e}");
            e.exit_code()
        }
        Ok(v) => {
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print!("{}", render(&v));
            }
            exit::OK
        }
    }
}

fn drill(cli: &Cli, cmd: &DrillCmd) -> i32 {
    use twinblk_tools::drill;
    match cmd {
        DrillCmd::Run { config } => match drill::run(config, true) {
            Err(e) => {
                eprintln!("twinblk-ctl: drill: {e}");
                e.exit_code()
            }
            Ok(o) => {
                if cli.json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&o.report).unwrap_or_default()
                    );
                } else {
                    let r = &o.report;
                    println!(
                        "drill {}: {}",
                        r["id"].as_str().unwrap_or("?"),
                        if o.pass { "PASS" } else { "FAIL" }
                    );
                    for c in r["result"]["checks"].as_array().into_iter().flatten() {
                        println!(
                            "  {:<9} {:<5} measured {}, target {}",
                            c["name"].as_str().unwrap_or("?"),
                            if c["pass"] == true { "pass" } else { "FAIL" },
                            c["measured"].as_str().unwrap_or("?"),
                            c["target"].as_str().unwrap_or("?")
                        );
                    }
                    println!("report: {}", o.json_path.display());
                    println!("html:   {}", o.html_path.display());
                }
                if o.pass { exit::OK } else { exit::DRILL_FAILED }
            }
        },
        DrillCmd::VerifyHistory { file, key } => {
            let checked =
                drill::sign::Key::read(key).and_then(|k| drill::sign::verify_history(&k, file));
            match checked {
                Err(e) => {
                    eprintln!("twinblk-ctl: drill verify-history: {e}");
                    exit::ERROR
                }
                Ok(c) => {
                    if cli.json {
                        println!("{}", serde_json::to_string_pretty(&c).unwrap_or_default());
                    } else if c.ok {
                        println!(
                            "{}: {} entries, every signature valid, chain unbroken",
                            file.display(),
                            c.entries
                        );
                    } else {
                        println!(
                            "{}: NOT AUTHENTIC ({} entries, {} problem(s))",
                            file.display(),
                            c.entries,
                            c.problems.len()
                        );
                        for p in &c.problems {
                            println!("  - {p}");
                        }
                    }
                    if c.ok { exit::OK } else { exit::NOT_AUTHENTIC }
                }
            }
        }
        DrillCmd::VerifyReport { file, key } => {
            let checked = drill::sign::Key::read(key).and_then(|k| {
                let text = std::fs::read(file).map_err(|source| drill::sign::SignError::Io {
                    path: file.clone(),
                    source,
                })?;
                let v: Value = serde_json::from_slice(&text).map_err(|e| {
                    drill::sign::SignError::Malformed(format!("{}: not JSON: {e}", file.display()))
                })?;
                drill::sign::verify_report(&k, &v)
            });
            match checked {
                Err(e) => {
                    eprintln!("twinblk-ctl: drill verify-report: {e}");
                    exit::NOT_AUTHENTIC
                }
                Ok(true) => {
                    println!("{}: signature valid", file.display());
                    exit::OK
                }
                Ok(false) => {
                    println!(
                        "{}: NOT AUTHENTIC: the signature does not match (changed, or another key)",
                        file.display()
                    );
                    exit::NOT_AUTHENTIC
                }
            }
        }
    }
}

fn raw(cli: &Cli, method: &str, params: Option<&str>) -> i32 {
    let params = match params.or(cli.params.as_deref()) {
        None => Value::Null,
        Some(p) => match twinblk_tools::ctl::params::parse(p) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("twinblk-ctl: parameters are not JSON (or give a key twice): {e}");
                return exit::USAGE;
            }
        },
    };
    match ctl::call(&first_socket(cli), method, params) {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            exit::OK
        }
        Err(e) => {
            eprintln!("twinblk-ctl: {e}");
            e.exit_code()
        }
    }
}

/// A number of seconds on the command line: finite, not negative, at most a year ("inf",
/// "nan" or "-1" would make no wait and panicked converting to a duration).
fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && (0.0..=31_536_000.0).contains(&x) => Ok(x),
        _ => Err(format!(
            "{s:?}: give a number of seconds from 0 to 31536000"
        )),
    }
}
