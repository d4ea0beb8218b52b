//! `twinblk-ctl volume|export|nvmf|iscsi`: the daemon's run-time change methods
//! (docs/control.md, "Run-time changes": `volume_create`, `volume_delete`, `nbd_export_add`,
//! `nbd_export_remove`, `nvmf_subsystem_*`, `nvmf_namespace_*`, `nvmf_host_*`, `iscsi_target_*`,
//! `iscsi_lun_*`) and the listings that show their effect (`volume_list`, `export_list`,
//! `nvmf_subsystems`), as commands a shell user can type.
//!
//! Model: every command is one call to the first site's control socket; its parameters are
//! exactly the method's, built by [`request`] from the parsed command line (nothing is checked
//! here that the daemon checks: sizes are sent as written, e.g. `"1GiB"`, and the daemon parses
//! them as the config file's sizes are parsed). The daemon's refusals keep their message and
//! get distinct exit codes (`CallError::exit_code`): in use ([`super::exit::IN_USE`]) and from
//! the config file ([`super::exit::CONFIGURED`]) apart from bad parameters ([`super::exit::ERROR`]).
//!
//! Invariant: a change is sent only as the operator typed it; every text answer says what
//! changed and, for additions and changes, that it lasts until the daemon stops (the method's
//! `lasts` field): nothing here writes the config file.

use super::{CallError, exit, render::bytes};
use clap::{Subcommand, ValueEnum};
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// `twinblk-ctl volume` verbs.
#[derive(Subcommand, Debug)]
pub enum VolumeCmd {
    /// Create a plain volume (`volume_create`): RAM (`malloc`) or a file or block device
    /// (`uring`). It lasts until the daemon stops.
    Create {
        /// The volume's name (1 to 64 of A-Z a-z 0-9 . _ - :).
        name: String,
        /// Its size in bytes or with a unit as in the config file: 4096, 64M, 512MiB, 1G, 2TiB.
        #[arg(long)]
        size: String,
        /// Where its blocks live.
        #[arg(long, value_enum, default_value_t = Backend::Malloc)]
        backend: Backend,
        /// For `uring`: the file or block device (a relative path is made absolute here).
        #[arg(long)]
        path: Option<PathBuf>,
        /// For `uring`: create the file (or extend it to --size) if needed.
        #[arg(long)]
        create: bool,
        /// 512 or 4096.
        #[arg(long)]
        block_size: Option<u64>,
    },
    /// Delete a volume created at run time (`volume_delete`); refused while an export,
    /// namespace or LUN names it or a host still reaches it.
    Delete {
        /// The volume.
        name: String,
    },
    /// The volumes served (`volume_list`).
    List,
}

/// A run-time volume's backend.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Backend {
    /// RAM.
    Malloc,
    /// A file or block device through io_uring.
    Uring,
}

/// `twinblk-ctl export` verbs (NBD).
#[derive(Subcommand, Debug)]
pub enum ExportCmd {
    /// Export a volume over NBD under NAME (`nbd_export_add`).
    Add {
        /// The export's name (what clients ask for: nbd://HOST:PORT/NAME).
        name: String,
        /// The volume.
        #[arg(long)]
        volume: String,
        /// Clients may only read.
        #[arg(long)]
        read_only: bool,
        /// Shown to clients that list exports.
        #[arg(long)]
        description: Option<String>,
    },
    /// Remove an NBD export added at run time (`nbd_export_remove`).
    Remove {
        /// The export.
        name: String,
        /// Also when clients are connected: they are closed cleanly (requests in flight are
        /// answered first).
        #[arg(long)]
        force: bool,
    },
    /// The NBD exports (`export_list`).
    List,
}

/// `twinblk-ctl nvmf` verbs.
#[derive(Subcommand, Debug)]
pub enum NvmfCmd {
    /// Subsystems: add, remove, list.
    Subsystem {
        #[command(subcommand)]
        cmd: SubsystemCmd,
    },
    /// Namespaces of a run-time subsystem: add, remove.
    Namespace {
        #[command(subcommand)]
        cmd: NamespaceCmd,
    },
    /// A subsystem's allowed hosts (any subsystem, also a configured one).
    Host {
        #[command(subcommand)]
        cmd: HostCmd,
    },
}

/// `twinblk-ctl nvmf subsystem` verbs.
#[derive(Subcommand, Debug)]
pub enum SubsystemCmd {
    /// Add a subsystem with no namespace (`nvmf_subsystem_add`).
    Add {
        /// Its NQN (nqn.…).
        nqn: String,
        /// A host NQN allowed to connect; repeat for each (none: any host).
        #[arg(long = "allow", value_name = "HOSTNQN")]
        allow: Vec<String>,
    },
    /// Remove a subsystem added at run time (`nvmf_subsystem_remove`).
    Remove {
        /// Its NQN.
        nqn: String,
        /// Also when hosts are connected: they are closed.
        #[arg(long)]
        force: bool,
    },
    /// The subsystems, their namespaces and allowed hosts (`nvmf_subsystems`).
    List,
}

/// `twinblk-ctl nvmf namespace` verbs.
#[derive(Subcommand, Debug)]
pub enum NamespaceCmd {
    /// Add a volume as a namespace (`nvmf_namespace_add`).
    Add {
        /// The subsystem (added at run time).
        nqn: String,
        /// The volume.
        #[arg(long)]
        volume: String,
        /// The namespace id, 1 to 1024 (default: the lowest free).
        #[arg(long)]
        nsid: Option<u64>,
        /// Also when hosts are connected: they are closed and see the new set on reconnecting.
        #[arg(long)]
        force: bool,
    },
    /// Remove a namespace (`nvmf_namespace_remove`).
    Remove {
        /// The subsystem (added at run time).
        nqn: String,
        /// The namespace id.
        #[arg(long)]
        nsid: u64,
        /// Also when hosts are connected: they are closed.
        #[arg(long)]
        force: bool,
    },
}

/// `twinblk-ctl nvmf host` verbs.
#[derive(Subcommand, Debug)]
pub enum HostCmd {
    /// Allow a host NQN to connect (`nvmf_host_allow`); the first one closes an open
    /// subsystem to every other host.
    Allow {
        /// The subsystem.
        nqn: String,
        /// The host NQN.
        host: String,
    },
    /// Stop allowing a host NQN (`nvmf_host_disallow`); its connections stay unless --force.
    Disallow {
        /// The subsystem.
        nqn: String,
        /// The host NQN.
        host: String,
        /// Also close the host's connections.
        #[arg(long)]
        force: bool,
    },
}

/// `twinblk-ctl iscsi` verbs.
#[derive(Subcommand, Debug)]
pub enum IscsiCmd {
    /// Targets: add, remove.
    Target {
        #[command(subcommand)]
        cmd: TargetCmd,
    },
    /// LUNs of a run-time target: add, remove.
    Lun {
        #[command(subcommand)]
        cmd: LunCmd,
    },
}

/// `twinblk-ctl iscsi target` verbs.
#[derive(Subcommand, Debug)]
pub enum TargetCmd {
    /// Add a target with no LUN and no CHAP (`iscsi_target_add`).
    Add {
        /// Its name (iqn.…, eui.… or naa.…).
        iqn: String,
        /// An initiator name allowed to log in; repeat for each (none: any initiator).
        #[arg(long = "allow", value_name = "INITIATOR")]
        allow: Vec<String>,
    },
    /// Remove a target added at run time (`iscsi_target_remove`).
    Remove {
        /// Its name.
        iqn: String,
        /// Also when sessions are logged in: they are closed.
        #[arg(long)]
        force: bool,
    },
}

/// `twinblk-ctl iscsi lun` verbs.
#[derive(Subcommand, Debug)]
pub enum LunCmd {
    /// Add a volume as a LUN (`iscsi_lun_add`).
    Add {
        /// The target (added at run time).
        iqn: String,
        /// The volume.
        #[arg(long)]
        volume: String,
        /// The LUN, 0 to 255 (default: the lowest free).
        #[arg(long)]
        lun: Option<u64>,
        /// Also when sessions are logged in: they are closed and see the new set on login.
        #[arg(long)]
        force: bool,
    },
    /// Remove a LUN (`iscsi_lun_remove`).
    Remove {
        /// The target (added at run time).
        iqn: String,
        /// The LUN.
        #[arg(long)]
        lun: u64,
        /// Also when sessions are logged in: they are closed.
        #[arg(long)]
        force: bool,
    },
}

/// One of the commands of this module.
#[derive(Debug)]
pub enum Cmd<'a> {
    /// `volume ...`.
    Volume(&'a VolumeCmd),
    /// `export ...`.
    Export(&'a ExportCmd),
    /// `nvmf ...`.
    Nvmf(&'a NvmfCmd),
    /// `iscsi ...`.
    Iscsi(&'a IscsiCmd),
}

/// A method and its parameters; `force`: whether the command was given `--force`, `None`
/// when it has no such flag.
#[derive(Debug, PartialEq)]
pub struct Request {
    /// The JSON-RPC method.
    pub method: &'static str,
    /// Its parameters.
    pub params: Value,
    /// `Some(given)` for commands with `--force`.
    pub force: Option<bool>,
}

fn req(method: &'static str, params: Value) -> Request {
    Request {
        method,
        params,
        force: None,
    }
}

fn forced(method: &'static str, mut params: Value, force: bool) -> Request {
    if force {
        params["force"] = json!(true);
    }
    Request {
        method,
        params,
        force: Some(force),
    }
}

/// The method call a command makes; Err: a command line the daemon need not see (exit 2).
pub fn request(cmd: &Cmd<'_>) -> Result<Request, String> {
    Ok(match cmd {
        Cmd::Volume(VolumeCmd::Create {
            name,
            size,
            backend,
            path,
            create,
            block_size,
        }) => {
            let mut p = json!({"name": name, "size": size});
            match backend {
                Backend::Malloc => {
                    if path.is_some() || *create {
                        return Err(
                            "--path and --create are for --backend uring (a RAM volume has no file)"
                                .into(),
                        );
                    }
                    p["backend"] = json!("malloc");
                }
                Backend::Uring => {
                    let Some(path) = path else {
                        return Err(
                            "--backend uring needs --path FILE (a file or block device)".into()
                        );
                    };
                    // The daemon's working directory is not the shell's.
                    let abs = std::path::absolute(path)
                        .map_err(|e| format!("--path {}: {e}", path.display()))?;
                    // JSON carries text: a path that is not UTF-8 would reach the daemon as
                    // another path (U+FFFD for each bad byte).
                    let abs = abs.to_str().ok_or_else(|| {
                        format!(
                            "--path {}: not UTF-8, which the control socket cannot carry; rename the file or link to it under a UTF-8 name",
                            abs.display()
                        )
                    })?;
                    p["backend"] = json!("uring");
                    p["path"] = json!(abs);
                    if *create {
                        p["create"] = json!(true);
                    }
                }
            }
            if let Some(b) = block_size {
                p["block_size"] = json!(b);
            }
            req("volume_create", p)
        }
        Cmd::Volume(VolumeCmd::Delete { name }) => req("volume_delete", json!({"name": name})),
        Cmd::Volume(VolumeCmd::List) => req("volume_list", Value::Null),
        Cmd::Export(ExportCmd::Add {
            name,
            volume,
            read_only,
            description,
        }) => {
            let mut p = json!({"name": name, "volume": volume});
            if *read_only {
                p["read_only"] = json!(true);
            }
            if let Some(d) = description {
                p["description"] = json!(d);
            }
            req("nbd_export_add", p)
        }
        Cmd::Export(ExportCmd::Remove { name, force }) => {
            forced("nbd_export_remove", json!({"name": name}), *force)
        }
        Cmd::Export(ExportCmd::List) => req("export_list", Value::Null),
        Cmd::Nvmf(NvmfCmd::Subsystem { cmd }) => match cmd {
            SubsystemCmd::Add { nqn, allow } => {
                let mut p = json!({"nqn": nqn});
                if !allow.is_empty() {
                    p["allowed_hosts"] = json!(allow);
                }
                req("nvmf_subsystem_add", p)
            }
            SubsystemCmd::Remove { nqn, force } => {
                forced("nvmf_subsystem_remove", json!({"nqn": nqn}), *force)
            }
            SubsystemCmd::List => req("nvmf_subsystems", Value::Null),
        },
        Cmd::Nvmf(NvmfCmd::Namespace { cmd }) => match cmd {
            NamespaceCmd::Add {
                nqn,
                volume,
                nsid,
                force,
            } => {
                let mut p = json!({"nqn": nqn, "volume": volume});
                if let Some(n) = nsid {
                    p["nsid"] = json!(n);
                }
                forced("nvmf_namespace_add", p, *force)
            }
            NamespaceCmd::Remove { nqn, nsid, force } => forced(
                "nvmf_namespace_remove",
                json!({"nqn": nqn, "nsid": nsid}),
                *force,
            ),
        },
        Cmd::Nvmf(NvmfCmd::Host { cmd }) => match cmd {
            HostCmd::Allow { nqn, host } => {
                req("nvmf_host_allow", json!({"nqn": nqn, "host": host}))
            }
            HostCmd::Disallow { nqn, host, force } => forced(
                "nvmf_host_disallow",
                json!({"nqn": nqn, "host": host}),
                *force,
            ),
        },
        Cmd::Iscsi(IscsiCmd::Target { cmd }) => match cmd {
            TargetCmd::Add { iqn, allow } => {
                let mut p = json!({"iqn": iqn});
                if !allow.is_empty() {
                    p["allowed_initiators"] = json!(allow);
                }
                req("iscsi_target_add", p)
            }
            TargetCmd::Remove { iqn, force } => {
                forced("iscsi_target_remove", json!({"iqn": iqn}), *force)
            }
        },
        Cmd::Iscsi(IscsiCmd::Lun { cmd }) => match cmd {
            LunCmd::Add {
                iqn,
                volume,
                lun,
                force,
            } => {
                let mut p = json!({"iqn": iqn, "volume": volume});
                if let Some(n) = lun {
                    p["lun"] = json!(n);
                }
                forced("iscsi_lun_add", p, *force)
            }
            LunCmd::Remove { iqn, lun, force } => {
                forced("iscsi_lun_remove", json!({"iqn": iqn, "lun": lun}), *force)
            }
        },
    })
}

fn st(v: &Value) -> &str {
    v.as_str().unwrap_or("?")
}

/// `lasts ...` line of a change's result (additions and changes carry it).
fn lasts(out: &mut String, r: &Value) {
    if let Some(l) = r["lasts"].as_str() {
        let _ = writeln!(out, "this change lasts {l}");
    }
}

fn closed(r: &Value) -> String {
    match r["closed_connections"].as_u64() {
        Some(0) | None => String::new(),
        Some(n) => format!("; {n} connection(s) closed"),
    }
}

/// A namespace change's controllers told of it (they stay connected and rescan).
fn notified(r: &Value) -> String {
    match r["notified_controllers"].as_u64() {
        Some(0) | None => String::new(),
        Some(n) => format!("; {n} connected controller(s) notified"),
    }
}

fn namespaces(r: &Value) -> String {
    let v: Vec<String> = r["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| format!("{}={}", n["nsid"], st(&n["volume"])))
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn luns(r: &Value) -> String {
    let v: Vec<String> = r["luns"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| format!("{}={}", n["lun"], st(&n["volume"])))
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn allowed(v: &Value, none: &str) -> String {
    let a: Vec<&str> = v.as_array().into_iter().flatten().map(st).collect();
    if a.is_empty() {
        none.into()
    } else {
        a.join(", ")
    }
}

/// The text answer to `method`'s result `r` (called with `params`).
pub fn render(method: &str, params: &Value, r: &Value) -> String {
    let mut o = String::new();
    // A removal's result is the subsystem or target without the removed id.
    let id = |k: &str| {
        r.get(k)
            .or_else(|| params.get(k))
            .map_or_else(|| "?".into(), Value::to_string)
    };
    match method {
        "volume_create" => {
            let _ = writeln!(
                o,
                "volume {} created: {} ({} bytes), block size {}, stack {}, slot {}",
                st(&r["name"]),
                bytes(r["size"].as_u64().unwrap_or(0)),
                r["size"],
                r["block_size"],
                st(&r["stack"]),
                r["index"]
            );
        }
        "volume_delete" => {
            let _ = writeln!(o, "volume {} deleted", st(&r["name"]));
        }
        "nbd_export_add" => {
            let _ = writeln!(
                o,
                "NBD export {} added: volume {}{}",
                st(&r["name"]),
                st(&r["volume"]),
                if r["read_only"] == true {
                    ", read-only"
                } else {
                    ""
                }
            );
        }
        "nbd_export_remove" => {
            let _ = writeln!(o, "NBD export {} removed{}", st(&r["name"]), closed(r));
        }
        "nvmf_subsystem_add" => {
            let _ = writeln!(
                o,
                "NVMe-oF subsystem {} added (no namespace yet); allowed hosts: {}",
                st(&r["nqn"]),
                allowed(&r["allowed_hosts"], "any")
            );
        }
        "nvmf_subsystem_remove" => {
            let _ = writeln!(
                o,
                "NVMe-oF subsystem {} removed{}",
                st(&r["nqn"]),
                closed(r)
            );
        }
        "nvmf_namespace_add" | "nvmf_namespace_remove" => {
            let _ = writeln!(
                o,
                "NVMe-oF subsystem {}: namespace {} {}{}{}; namespaces now: {}",
                st(&r["nqn"]),
                id("nsid"),
                if method == "nvmf_namespace_add" {
                    "added"
                } else {
                    "removed"
                },
                closed(r),
                notified(r),
                namespaces(r)
            );
        }
        "nvmf_host_allow" | "nvmf_host_disallow" => {
            let _ = writeln!(
                o,
                "NVMe-oF subsystem {}: allowed hosts now: {}{} (applies to the next connections)",
                st(&r["nqn"]),
                allowed(&r["allowed_hosts"], "any"),
                closed(r)
            );
        }
        "iscsi_target_add" => {
            let _ = writeln!(
                o,
                "iSCSI target {} added (no LUN yet, no CHAP); allowed initiators: {}",
                st(&r["iqn"]),
                allowed(&r["allowed_initiators"], "any")
            );
        }
        "iscsi_target_remove" => {
            let _ = writeln!(o, "iSCSI target {} removed{}", st(&r["iqn"]), closed(r));
        }
        "iscsi_lun_add" | "iscsi_lun_remove" => {
            let _ = writeln!(
                o,
                "iSCSI target {}: LUN {} {}{}; LUNs now: {}",
                st(&r["iqn"]),
                id("lun"),
                if method == "iscsi_lun_add" {
                    "added"
                } else {
                    "removed"
                },
                closed(r),
                luns(r)
            );
        }
        "volume_list" => {
            let _ = writeln!(o, "{:<24} {:>12} {:>6}  stack", "volume", "size", "block");
            for v in r.as_array().into_iter().flatten() {
                let _ = writeln!(
                    o,
                    "{:<24} {:>12} {:>6}  {}",
                    st(&v["name"]),
                    bytes(v["size"].as_u64().unwrap_or(0)),
                    v["block_size"].to_string(),
                    st(&v["stack"])
                );
            }
        }
        "export_list" => {
            let _ = writeln!(
                o,
                "{:<24} {:<24} {:<10} from",
                "NBD export", "volume", "access"
            );
            for e in r.as_array().into_iter().flatten() {
                let _ = writeln!(
                    o,
                    "{:<24} {:<24} {:<10} {}",
                    st(&e["name"]),
                    st(&e["volume"]),
                    if e["read_only"] == true {
                        "read-only"
                    } else {
                        "read-write"
                    },
                    if e["runtime"] == true {
                        "run time"
                    } else {
                        "config file"
                    }
                );
            }
        }
        "nvmf_subsystems" => {
            for s in r["subsystems"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    o,
                    "{} ({}): namespaces {}; allowed hosts {}",
                    st(&s["nqn"]),
                    if s["runtime"] == true {
                        "run time"
                    } else {
                        "config file"
                    },
                    namespaces(s),
                    allowed(&s["allowed_hosts"], "any")
                );
            }
            if o.is_empty() {
                o.push_str("no NVMe-oF subsystem\n");
            }
        }
        _ => {
            let _ = writeln!(o, "{r}");
        }
    }
    lasts(&mut o, r);
    o
}

/// What to add to the daemon's refusal for a shell user, for `req`.
fn hint(req: &Request, e: &CallError) -> Option<&'static str> {
    match (e.exit_code(), req.force) {
        (exit::IN_USE, Some(false)) => {
            Some("nothing changed; run it again with --force to close those connections")
        }
        (exit::IN_USE, _) => Some("nothing changed"),
        (exit::CONFIGURED, _) => {
            Some("nothing changed; objects from the config file change only there (and a restart)")
        }
        _ => None,
    }
}

/// Run `cmd` against `socket`; print its result (`json`: as the method answered it); the
/// exit code.
pub fn run(socket: &Path, json_out: bool, cmd: &Cmd<'_>) -> i32 {
    let r = match request(cmd) {
        Ok(r) => r,
        Err(m) => {
            eprintln!("twinblk-ctl: {m}");
            return exit::USAGE;
        }
    };
    match super::call(socket, r.method, r.params.clone()) {
        Err(e) => {
            eprintln!("twinblk-ctl: {e}");
            if let Some(h) = hint(&r, &e) {
                eprintln!("twinblk-ctl: {h}");
            }
            e.exit_code()
        }
        Ok(v) => {
            if json_out {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print!("{}", render(r.method, &r.params, &v));
            }
            exit::OK
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_the_methods_parameter_names() {
        let c = VolumeCmd::Create {
            name: "v".into(),
            size: "1GiB".into(),
            backend: Backend::Malloc,
            path: None,
            create: false,
            block_size: Some(4096),
        };
        let r = request(&Cmd::Volume(&c)).unwrap();
        assert_eq!(r.method, "volume_create");
        assert_eq!(
            r.params,
            json!({"name": "v", "size": "1GiB", "backend": "malloc", "block_size": 4096})
        );
        let c = VolumeCmd::Create {
            name: "v".into(),
            size: "1G".into(),
            backend: Backend::Uring,
            path: Some("rel/f.img".into()),
            create: true,
            block_size: None,
        };
        let r = request(&Cmd::Volume(&c)).unwrap();
        let p = r.params["path"].as_str().unwrap();
        assert!(p.starts_with('/') && p.ends_with("rel/f.img"), "{p}");
        assert_eq!(r.params["create"], true);
        let c = VolumeCmd::Create {
            name: "v".into(),
            size: "1G".into(),
            backend: Backend::Uring,
            path: None,
            create: false,
            block_size: None,
        };
        assert!(request(&Cmd::Volume(&c)).unwrap_err().contains("--path"));
        let c = NvmfCmd::Namespace {
            cmd: NamespaceCmd::Remove {
                nqn: "nqn.x".into(),
                nsid: 3,
                force: true,
            },
        };
        let r = request(&Cmd::Nvmf(&c)).unwrap();
        assert_eq!(r.method, "nvmf_namespace_remove");
        assert_eq!(r.params, json!({"nqn": "nqn.x", "nsid": 3, "force": true}));
        assert_eq!(r.force, Some(true));
        let c = IscsiCmd::Target {
            cmd: TargetCmd::Add {
                iqn: "iqn.x".into(),
                allow: vec!["iqn.i1".into(), "iqn.i2".into()],
            },
        };
        let r = request(&Cmd::Iscsi(&c)).unwrap();
        assert_eq!(
            r.params,
            json!({"iqn": "iqn.x", "allowed_initiators": ["iqn.i1", "iqn.i2"]})
        );
        assert_eq!(r.force, None);
    }

    #[test]
    fn text_says_what_changed_and_how_long_it_lasts() {
        let t = render(
            "volume_create",
            &Value::Null,
            &json!({"name": "v", "index": 1, "size": 1u64 << 30, "block_size": 512, "stack": "malloc", "lasts": "until the daemon stops (x)"}),
        );
        assert!(
            t.contains("volume v created: 1.0 GiB (1073741824 bytes)"),
            "{t}"
        );
        assert!(t.contains("lasts until the daemon stops"), "{t}");
        let t = render(
            "nbd_export_remove",
            &Value::Null,
            &json!({"name": "e", "removed": true, "closed_connections": 2}),
        );
        assert_eq!(t, "NBD export e removed; 2 connection(s) closed\n");
        let t = render(
            "nvmf_namespace_remove",
            &json!({"nqn": "nqn.x", "nsid": 2}),
            &json!({"nqn": "nqn.x", "namespaces": [{"nsid": 1, "volume": "a"}], "lasts": "until the daemon stops"}),
        );
        assert!(
            t.starts_with("NVMe-oF subsystem nqn.x: namespace 2 removed; namespaces now: 1=a\n"),
            "{t}"
        );
        let t = render(
            "nvmf_namespace_add",
            &json!({"nqn": "nqn.x", "volume": "b"}),
            &json!({"nqn": "nqn.x", "nsid": 2, "closed_connections": 0, "notified_controllers": 2, "namespaces": [{"nsid": 1, "volume": "a"}, {"nsid": 2, "volume": "b"}], "lasts": "until the daemon stops"}),
        );
        assert!(
            t.starts_with("NVMe-oF subsystem nqn.x: namespace 2 added; 2 connected controller(s) notified; namespaces now: 1=a, 2=b\n"),
            "{t}"
        );
    }
}
