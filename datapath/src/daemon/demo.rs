//! `twinblk demo`: a two-site stretched cluster on loopback in one command.
//!
//! Model: the demo starts a witness (`twinblk witness`, its own process, with a fresh random
//! key in the demo directory), writes one config per site into that directory (each site
//! keeps its replica state in `state-<site>/` there), starts
//! `twinblk serve` once per site as its own process (site `a` leads `vol0`; site `a` on the standard ports, NBD
//! 10809, NVMe/TCP 4420 and iSCSI 3260, site `b` on the next ones), reads each site's endpoints from its standard output, waits
//! (up to 10 s) until the pair is in sync, prints the endpoints one per line with each
//! process's PID and the command that restarts a site, and then waits. Ctrl-C (or SIGTERM) stops everything
//! cleanly; if a site dies (killed to try a failover), the demo says so, with the command
//! that starts it again, and the rest keep running (a site started again by hand is not the
//! demo's child: it is not stopped by Ctrl-C); when both sites are gone it stops the witness
//! and exits with an error. A RAM replica restarted this way is a new replica: it serves
//! nothing until its peer has sent it every region ever written (docs/architecture.md). If the demo
//! itself dies, even by SIGKILL, the kernel sends its children SIGTERM (`PR_SET_PDEATHSIG`), so
//! no witness or site outlives it.

use crate::control::config::{CNTLID_SPLIT, MAX_CNTLID};
use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Demo settings.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Where the site configs (and control sockets) go.
    pub dir: PathBuf,
    /// NBD port of site a (site b uses the next one).
    pub nbd_port: u16,
    /// Replication port of site a (site b uses the next one).
    pub repl_port: u16,
    /// NVMe/TCP port of site a (site b uses the next one).
    pub nvmf_port: u16,
    /// iSCSI port of site a (site b uses the next one).
    pub iscsi_port: u16,
    /// The witness's UDP port.
    pub witness_port: u16,
    /// Size of the mirrored RAM volume.
    pub size: String,
    /// The `twinblk` binary to start for each site.
    pub exe: PathBuf,
}

/// Config text of one site.
pub fn site_config(o: &DemoOptions, site: usize) -> String {
    let names = ["a", "b"];
    let me = names[site];
    let peer = names[1 - site];
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let core = if cpus > 1 { site } else { 0 };
    format!(
        "# twinblk demo: site {me} of a two-site mirror on loopback\n\
         [reactor]\ncores = [{core}]\npin = {pin}\n\n\
         [nbd]\nlisten = [\"127.0.0.1:{nbd}\"]\n\n\
         [iscsi]\nlisten = [\"127.0.0.1:{iscsi}\"]\n\
         # SendTargets also lists the other site's portal (its target portal group tag)\n\
         extra_portals = [\"127.0.0.1:{peer_iscsi},{peer_tpg}\"]\n\n\
         [nvmf]\nlisten = [\"127.0.0.1:{nvmf}\"]\n\
         # controller ids are unique within a subsystem, which both sites present: one range each\n\
         min_cntlid = {min_cntlid:#06x}\nmax_cntlid = {max_cntlid:#06x}\n\n\
         [control]\nsocket = \"{dir}/site-{me}.sock\"\n\n\
         [mirror]\nsite = \"{me}\"\npeer_site = \"{peer}\"\n\
         listen = [\"127.0.0.1:{repl}\"]\npeer = \"127.0.0.1:{peer_repl}\"\n\
         witness = \"127.0.0.1:{witness}\"\nwitness_key_file = \"{dir}/witness.key\"\n\
         state_dir = \"{dir}/state-{me}\"\n\n\
         [[volume]]\nname = \"vol0\"\nbackend = \"malloc\"\nsize = \"{size}\"\nmirror = true\n\
         leader = \"a\"\n",
        pin = cpus > 1,
        nbd = o.nbd_port + site as u16,
        nvmf = o.nvmf_port + site as u16,
        iscsi = o.iscsi_port + site as u16,
        peer_iscsi = o.iscsi_port + 1 - site as u16,
        peer_tpg = 2 - site,
        min_cntlid = [1, CNTLID_SPLIT + 1][site],
        max_cntlid = [CNTLID_SPLIT, MAX_CNTLID][site],
        dir = o.dir.display(),
        repl = o.repl_port + site as u16,
        peer_repl = o.repl_port + 1 - site as u16,
        witness = o.witness_port,
        size = o.size,
    )
}

struct Site {
    name: &'static str,
    child: Child,
    uris: Vec<String>,
}

/// The command that starts site `name` again with its config.
pub fn restart_command(o: &DemoOptions, name: &str) -> String {
    format!(
        "{} serve --config {}/site-{name}.toml",
        o.exe.display(),
        o.dir.display()
    )
}

/// Wait (up to `within`) until both sites report `vol0` in sync (state "up"); false if not.
fn wait_in_sync(o: &DemoOptions, within: Duration) -> bool {
    let up = |name: &str| -> Option<bool> {
        let mut s =
            std::os::unix::net::UnixStream::connect(o.dir.join(format!("site-{name}.sock")))
                .ok()?;
        s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        s.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"mirror_status\"}\n")
            .ok()?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).ok()?;
        let v: serde_json::Value = serde_json::from_str(&line).ok()?;
        Some(v["result"][0]["state"] == "up")
    };
    let t = std::time::Instant::now();
    while t.elapsed() < within {
        if up("a") == Some(true) && up("b") == Some(true) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn start_site(o: &DemoOptions, site: usize) -> Result<Site> {
    let name = ["a", "b"][site];
    let state = o.dir.join(format!("state-{name}"));
    std::fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
    let path = o.dir.join(format!("site-{name}.toml"));
    std::fs::write(&path, site_config(o, site))
        .with_context(|| format!("writing {}", path.display()))?;
    let mut cmd = Command::new(&o.exe);
    cmd.arg("serve").arg("--config").arg(&path);
    start_proc(cmd, name, "Ctrl-C")
}

fn start_witness(o: &DemoOptions) -> Result<Site> {
    let key = o.dir.join("witness.key");
    if !key.exists() {
        let mut k = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut k))
            .context("reading /dev/urandom for the witness key")?;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &k))
            .with_context(|| format!("writing {}", key.display()))?;
    }
    let mut cmd = Command::new(&o.exe);
    cmd.arg("witness")
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", o.witness_port))
        .arg("--key-file")
        .arg(&key)
        .arg("--state")
        .arg(o.dir.join("witness.state"));
    start_proc(cmd, "witness", "twinblk witness on")
}

/// Make the child die with the demo: `PR_SET_PDEATHSIG` asks the kernel to send it SIGTERM
/// (a clean stop) when the demo goes away, even by SIGKILL, when nothing could forward a
/// signal. The signal comes when the thread that forked the child ends, so every child is
/// started from the demo's main thread, which lives as long as the demo.
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and calls only prctl, getppid
    // and raise, which are async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGTERM as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The demo died between the fork and the prctl: nobody will signal us.
            if libc::getppid() != parent {
                libc::raise(libc::SIGTERM);
            }
            Ok(())
        });
    }
}

fn start_proc(mut cmd: Command, name: &'static str, ready: &str) -> Result<Site> {
    die_with_parent(&mut cmd);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let out = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(out).lines();
    let mut uris = Vec::new();
    loop {
        match lines.next() {
            Some(Ok(l)) => {
                let t = l.trim();
                if !t.contains(' ') && t.contains("://") {
                    uris.push(t.to_string());
                }
                if t.starts_with(ready) {
                    break;
                }
            }
            _ => {
                let status = child.wait()?;
                bail!("{name} exited during start-up ({status}); see its log above");
            }
        }
    }
    // Keep draining its output so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    Ok(Site { name, child, uris })
}

fn stop_all(sites: &mut [Site]) {
    // Sites first, the witness (started first) last.
    for s in sites.iter_mut().rev() {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
    }
    for s in sites.iter_mut() {
        let _ = s.child.wait();
    }
}

/// Run the demo until Ctrl-C.
pub fn run(o: DemoOptions) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    // Its configs, sockets and witness key: never in a directory another user can write.
    crate::control::config::private_dir(&o.dir, "the demo's configs and witness key")
        .map_err(anyhow::Error::msg)?;
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    let mut sites = vec![start_witness(&o)?];
    for i in 0..2 {
        match start_site(&o, i) {
            Ok(s) => sites.push(s),
            Err(e) => {
                stop_all(&mut sites);
                return Err(e);
            }
        }
    }
    if !wait_in_sync(&o, Duration::from_secs(10)) {
        eprintln!("twinblk demo: the sites are not in sync after 10 s; see their logs above");
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "twinblk demo: volume vol0 ({} RAM) mirrored synchronously between site a (leader) and site b, with a witness",
        o.size
    )?;
    for s in &sites {
        for u in &s.uris {
            writeln!(out, "{u}")?;
        }
    }
    for s in &sites {
        if s.name == "witness" {
            writeln!(
                out,
                "witness pid {} (udp://127.0.0.1:{}, key {}/witness.key)",
                s.child.id(),
                o.witness_port,
                o.dir.display()
            )?;
            continue;
        }
        writeln!(
            out,
            "site {} pid {} (config {}/site-{}.toml, control {}/site-{}.sock)",
            s.name,
            s.child.id(),
            o.dir.display(),
            s.name,
            o.dir.display(),
            s.name
        )?;
    }
    writeln!(
        out,
        "A killed site starts again with: {} (site b: {})",
        restart_command(&o, "a"),
        restart_command(&o, "b")
    )?;
    writeln!(out, "Ctrl-C stops both sites.")?;
    out.flush()?;
    drop(out);
    loop {
        if signals.pending().next().is_some() {
            stop_all(&mut sites);
            return Ok(());
        }
        // A process that dies (say, killed to try a failover) is reported; the others keep
        // running, since surviving that is the point of the cluster.
        let mut i = 0;
        while i < sites.len() {
            if let Some(status) = sites[i].child.try_wait()? {
                let name = sites[i].name;
                sites.remove(i);
                if name == "witness" {
                    eprintln!("twinblk demo: {name} exited ({status}); the others keep running");
                } else {
                    eprintln!(
                        "twinblk demo: site {name} exited ({status}); the others keep running. \
                         Start it again with: {} (it is then not stopped by Ctrl-C)",
                        restart_command(&o, name)
                    );
                }
            } else {
                i += 1;
            }
        }
        if sites.iter().all(|s| s.name == "witness") {
            stop_all(&mut sites);
            bail!("both sites have exited");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The demo's directory (default `/tmp/twinblk-demo`, a name anyone can foresee) is
    /// refused when it is open to others (or a link, or another user's): the demo writes its
    /// configs there (through any link found at their names) and takes a witness key found
    /// there as its own.
    #[test]
    fn the_demo_refuses_a_directory_open_to_others_before_it_starts_anything() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("demo");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let o = DemoOptions {
            dir: dir.clone(),
            nbd_port: 1,
            repl_port: 1,
            nvmf_port: 1,
            iscsi_port: 1,
            witness_port: 1,
            size: "1MiB".into(),
            exe: d.path().join("no-such-twinblk"),
        };
        let e = format!("{:#}", run(o).unwrap_err());
        assert!(e.contains("refusing"), "{e}");
        assert!(!dir.join("witness.key").exists(), "nothing written");
    }
    use crate::control::config::Config;

    #[test]
    fn the_demo_sites_have_disjoint_controller_ids_and_distinct_port_ids() {
        let o = DemoOptions {
            dir: PathBuf::from("/tmp/twinblk-demo-test"),
            nbd_port: 10809,
            repl_port: 7700,
            nvmf_port: 4420,
            iscsi_port: 3260,
            witness_port: 7800,
            size: "64MiB".into(),
            exe: PathBuf::from("twinblk"),
        };
        let key = tempfile::NamedTempFile::new().unwrap();
        let cfg = |site| {
            let text = site_config(&o, site).replace(
                &format!("{}/witness.key", o.dir.display()),
                &key.path().display().to_string(),
            );
            Config::from_toml(&text).unwrap()
        };
        let (a, b) = (cfg(0), cfg(1));
        let (ra, rb) = (a.cntlid_range(), b.cntlid_range());
        assert_eq!(
            (a.nvmf.min_cntlid, b.nvmf.max_cntlid),
            (Some(1), Some(0xFFEF))
        );
        assert!(ra.end() < rb.start(), "{ra:?} and {rb:?} overlap");
        assert_ne!(a.nvmf_first_port_id(), b.nvmf_first_port_id());
        assert_eq!((a.iscsi_tpg(), b.iscsi_tpg()), (1, 2));
        assert_eq!(a.iscsi.listen[0].port() + 1, b.iscsi.listen[0].port());
        assert_eq!(a.iscsi.extra_portals, vec!["127.0.0.1:3261,2".to_string()]);
    }
}
