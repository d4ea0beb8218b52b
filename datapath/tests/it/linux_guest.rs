//! The Linux kernel's own initiators against a two-site mirrored cluster, a read-only
//! point-in-time view and namespaces added and removed under a connected host, in a QEMU guest
//! (`guest` module: Debian's kernel, an initramfs built by the test; KVM where it works, TCG
//! otherwise). Skipped, with the reason printed, where the machine cannot run a guest (no apt
//! access, no QEMU obtainable, `TWINBLK_SKIP_GUEST=1`); once the guest boots every check must
//! pass. The failover scenarios' tests sit in other modules (`nvmf_ana`, `failover`,
//! `iscsi_alua`) and call [`failover_guest`] and [`iscsi_failover_guest`] here: apart in name
//! order, two of them are seldom scheduled at once, one test thread waiting for the other's
//! guest (one guest runs at a time).

use crate::failover::{KEY, WitnessProc, witness_site_body};
use crate::guest::{self, Run};
use crate::harness::{Server, free_port};
use crate::iscsi::two_sites;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// MiB of each pattern the guest writes (`TWINBLK_GUEST_MIB` overrides; the volume is 64 MiB).
fn pattern_mib() -> u64 {
    std::env::var("TWINBLK_GUEST_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|m| (1..=64).contains(m))
        .unwrap_or(32)
}

fn timeout() -> Duration {
    Duration::from_secs(
        std::env::var("TWINBLK_GUEST_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(420),
    )
}

/// The md5 of the first `len` bytes of a replica file.
fn md5_prefix(file: &Path, len: u64) -> String {
    let mut f = std::fs::File::open(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let mut data = vec![0u8; len as usize];
    f.read_exact(&mut data).unwrap();
    md5_of(&data)
}

/// The md5 of `data` (`md5sum` reads it from a pipe).
fn md5_of(data: &[u8]) -> String {
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("md5sum");
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(data).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// The checks of a guest that connected to both sites' NVMe/TCP listeners (nvme-paths.sh's
/// `both_paths`).
const BOTH_PATHS: [&str; 5] = ["modules", "network", "connect-a", "connect-b", "multipath"];

/// The kernel command line of a guest connecting to both sites' NVMe/TCP listeners (volume
/// `vol0`'s subsystem) and writing `mib` MiB patterns, with the scenario's `more`.
fn two_site_args<const N: usize>(
    a: &Server,
    b: &Server,
    mib: u64,
    more: [(&'static str, &str); N],
) -> Vec<(&'static str, String)> {
    let mut args = vec![
        ("host", "10.0.2.2".to_string()),
        ("porta", a.nvmf_addr.port().to_string()),
        ("portb", b.nvmf_addr.port().to_string()),
        ("nqn", "nqn.2026-11.io.twinblk:vol0".to_string()),
        ("mib", mib.to_string()),
    ];
    args.extend(more.map(|(k, v)| (k, v.to_string())));
    args
}

/// Fail unless the run ended by itself, every check passed and each of `required` passed.
#[track_caller]
fn assert_passed(run: &Run, required: &[&str]) {
    let failed: Vec<String> = run
        .lines
        .iter()
        .filter_map(|l| match l {
            guest::Line::Check {
                name,
                pass: false,
                evidence,
            } => Some(format!("{name}: {evidence}")),
            _ => None,
        })
        .collect();
    let missing: Vec<&&str> = required
        .iter()
        .filter(|r| run.check(r).is_none_or(|(pass, _)| !pass))
        .collect();
    let ended = run.lines.iter().any(|l| matches!(l, guest::Line::End(0)));
    assert!(
        !run.timed_out && ended && failed.is_empty() && missing.is_empty(),
        "the guest's checks did not all pass (timed out: {}, ended cleanly: {ended}):\nfailed: {failed:#?}\nmissing or failed: {missing:?}\nconsole ({}), last lines:\n{}",
        run.timed_out,
        run.console.display(),
        run.console_tail(60)
    );
}

/// The kernel's iSCSI initiator (iscsi_tcp, open-iscsi) logs in to site a and to site b of a
/// mirrored volume (two sessions, two sd disks of one LU: the same wwid and size); the sites'
/// host list places the guest's initiator at site b, so the kernel's ALUA handler must show
/// site b's disk active/optimized and site a's (the leader's) active/non-optimized. It writes a
/// random pattern with O_DIRECT through site a's disk and reads it back identical through site
/// b's, then writes through b and reads through a, and logs out of both; the kernel log shows
/// no I/O error, abort, reset or connection error. The host then finds the last pattern in
/// both sites' replica files.
#[test]
fn linux_iscsi_initiator_writes_at_one_site_and_reads_at_the_other() {
    let Some(kit) =
        guest::kit_or_skip("linux_iscsi_initiator_writes_at_one_site_and_reads_at_the_other")
    else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    // The initiator name tools/guest/linux/iscsi.sh gives the guest, at site b.
    let hosts = "[[host]]\nname='iqn.2026-12.io.twinblk.test:linux-guest'\nsite='b'\n";
    let (a, ia, b, ib) = two_sites(root.path(), hosts);
    let mib = pattern_mib();
    let run = guest::boot(
        kit,
        "iscsi-two-sites",
        "iscsi",
        &[
            ("host", "10.0.2.2".to_string()),
            ("porta", ia.port().to_string()),
            ("portb", ib.port().to_string()),
            ("iqn", "iqn.2026-11.io.twinblk:vol0".to_string()),
            ("mib", mib.to_string()),
            ("aluaa", "active/non-optimized".to_string()),
            ("aluab", "active/optimized".to_string()),
        ],
        timeout(),
    );
    let pa = format!("logout-{}", ia.port());
    let pb = format!("logout-{}", ib.port());
    assert_passed(
        &run,
        &[
            "modules",
            "network",
            "discovery",
            "login-a",
            "login-b",
            "same-lu",
            "alua",
            "sessions",
            "write-a-read-b",
            "write-b-read-a",
            &pa,
            &pb,
            "disks-gone",
            "kernel-log",
        ],
    );
    // The last pattern (written through site b) is in both replicas.
    let want = run
        .info("write-b-read-a-md5")
        .expect("the guest reported its pattern's md5");
    for site in ["a", "b"] {
        let got = md5_prefix(&root.path().join(format!("{site}.img")), mib << 20);
        assert_eq!(
            got, want,
            "site {site}'s replica holds the guest's last pattern"
        );
    }
    eprintln!(
        "linux iSCSI guest: {mib} MiB each way, guest {:.1} s",
        run.elapsed.as_secs_f64()
    );
    drop((a, b));
}

/// The kernel's NVMe/TCP initiator (nvme_tcp, nvme-cli) connects to site a and site b of a
/// mirrored volume whose sites' host list places the guest's host NQN at site b: native NVMe
/// multipath makes one namespace head with two paths, site b's ANA optimized and site a's
/// (the leader's) non-optimized, as each site reports to that host per controller ("Where
/// hosts are"). A pattern written through the head is read back
/// through site b alone (site a's controller disconnected), a second one written there is read
/// back through site a alone (a reconnected, b disconnected); no controller is left and the
/// kernel log is clean. Both replicas hold the last pattern.
#[test]
fn linux_nvme_multipath_across_both_sites_reads_what_either_site_wrote() {
    let Some(kit) =
        guest::kit_or_skip("linux_nvme_multipath_across_both_sites_reads_what_either_site_wrote")
    else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    // The host NQN tools/guest/linux/nvme.sh gives the guest, at site b.
    let hosts = "[[host]]\nname='nqn.2014-08.org.nvmexpress:uuid:5d1a6c1e-7a1b-4c55-9a57-2b1c0e1f7e11'\nsite='b'\n";
    let (a, _, b, _) = two_sites(root.path(), hosts);
    let mib = pattern_mib();
    let run = guest::boot(
        kit,
        "nvme-two-sites",
        "nvme",
        &two_site_args(
            &a,
            &b,
            mib,
            [("anaa", "non-optimized"), ("anab", "optimized")],
        ),
        timeout(),
    );
    assert_passed(
        &run,
        &[
            BOTH_PATHS.as_slice(),
            &[
                "write-head",
                "disconnect-a-1",
                "read-at-b",
                "write-at-b",
                "reconnect-a",
                "disconnect-b-1",
                "read-at-a",
                "disconnect-a-2",
                "controllers-gone",
                "kernel-log",
            ],
        ]
        .concat(),
    );
    let want = run
        .info("write-at-b-md5")
        .expect("the guest reported its pattern's md5");
    for site in ["a", "b"] {
        let got = md5_prefix(&root.path().join(format!("{site}.img")), mib << 20);
        assert_eq!(
            got, want,
            "site {site}'s replica holds the guest's last pattern"
        );
    }
    eprintln!(
        "linux NVMe/TCP guest: {mib} MiB patterns, guest {:.1} s",
        run.elapsed.as_secs_f64()
    );
    drop((a, b));
}

/// A read-only CDP point-in-time view as the kernel's own initiators attach it (one daemon on
/// the host serving the view, `vol0`, and a writable RAM volume, `plain`, over NVMe/TCP and
/// iSCSI). NVMe/TCP: after `nvme connect` the view's namespace is read-only to the kernel
/// (`/sys/block/<ns>/ro` and `blockdev --getro` 1: NSATTR's write-protected bit), its first MiB
/// has the md5 of the history at the view's point (not the write made after it), and an
/// O_DIRECT write fails with the data unchanged; the writable volume's namespace is not
/// read-only and a pattern written there reads back (the control). iSCSI: the view's sd disk is
/// read-only (sd logs "Write Protect is on", from MODE SENSE's WP), reads the same md5 and
/// refuses a write. Disconnect and logout leave nothing attached; the kernel log shows no I/O
/// error and no write that reached a read-only device.
///
/// The writable volume is served by a run-time subsystem (`nvmf_subsystem_add`; a configured
/// one refuses namespace changes), and while the kernel is connected to it the test adds a
/// second volume as namespace 2 and later removes it (docs/nvmf.md, "Namespace changes"): the
/// kernel must rescan on the Namespace Attribute Changed event and show a block device with
/// nsid 2 within 10 s, which reads what the test wrote into that volume's file and takes a
/// pattern the test then finds in the file; after the removal the device must be gone within
/// 10 s and namespace 1 still read its pattern and take a new one.
#[test]
fn linux_initiators_attach_a_read_only_view_read_only() {
    let Some(kit) = guest::kit_or_skip("linux_initiators_attach_a_read_only_view_read_only") else {
        return;
    };
    use crate::cdp::{last, volume};
    use crate::harness::{in_process, pattern};
    use crate::rawnbd::Client;
    use crate::read_only::listener;
    use twinblk::daemon::Proto;
    const SIZE: u64 = 4 << 20;
    const MIB: u64 = 1;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("j");
    // The history: a pattern over the first MiB, the view's point, then a write over its first
    // 64 KiB that the view must not show.
    let (mut d, addr) = in_process(&volume("v", SIZE, &dir, "4MiB"));
    let mut c = Client::connect(addr, "v", false);
    let data = pattern(11, (MIB << 20) as usize);
    for (i, chunk) in data.chunks(256 << 10).enumerate() {
        assert_eq!(c.write(i as u64 * (256 << 10), chunk), 0);
    }
    std::thread::sleep(Duration::from_millis(50));
    let t = last(&dir).1;
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(c.write(0, &pattern(12, 64 << 10)), 0);
    c.disconnect();
    d.stop();
    let want = md5_of(&data);

    let sock = tmp.path().join("ctl.sock");
    let text = format!(
        "[reactor]\ncores=[0]\nwait='adaptive'\npin=false\n[nvmf]\nlisten=['127.0.0.1:0']\n\
         [iscsi]\nlisten=['127.0.0.1:0']\n[control]\nsocket='{}'\n\
         [[volume]]\nname='vol0'\nbackend='cdp-view'\nsize={SIZE}\nblock_size=4096\n\
         [volume.view]\ndir='{}'\ntime={t}\nsandbox=false\n\
         [[volume]]\nname='plain'\nbackend='malloc'\nsize={SIZE}\nblock_size=4096\n",
        sock.display(),
        dir.display()
    );
    let cfg = twinblk::control::config::Config::from_toml(&text).expect("test config");
    let mut d = twinblk::Daemon::start(&cfg).expect("daemon starts");
    // The writable volume in a run-time subsystem, and the volume its namespace 2 will be: a
    // file holding a pattern the guest must read.
    let ok = |method: &str, params: serde_json::Value| {
        let r = crate::harness::rpc_at(&sock, method, params.clone());
        assert!(r.get("error").is_none(), "{method} {params}: {r}");
    };
    let live = "nqn.2026-11.io.twinblk:live";
    ok("nvmf_subsystem_add", serde_json::json!({"nqn": live}));
    ok(
        "nvmf_namespace_add",
        serde_json::json!({"nqn": live, "volume": "plain", "nsid": 1}),
    );
    let second = tmp.path().join("second.img");
    let first_mib = pattern(13, (MIB << 20) as usize);
    let mut img = first_mib.clone();
    img.resize(SIZE as usize, 0);
    std::fs::write(&second, &img).unwrap();
    ok(
        "volume_create",
        serde_json::json!({"name": "second", "backend": "uring", "size": SIZE,
            "block_size": 4096, "path": second.display().to_string()}),
    );
    // What the control socket answered to the guest's ns-add and ns-remove, in order.
    let mut changes: Vec<(String, serde_json::Value)> = Vec::new();
    let run = guest::boot_acting(
        kit,
        "read-only-view",
        "readonly",
        &[
            ("host", "10.0.2.2".to_string()),
            ("nvport", listener(&d, Proto::Nvmf).port().to_string()),
            ("ronqn", "nqn.2026-11.io.twinblk:vol0".to_string()),
            ("rwnqn", live.to_string()),
            ("iport", listener(&d, Proto::Iscsi).port().to_string()),
            ("roiqn", "iqn.2026-11.io.twinblk:vol0".to_string()),
            ("md5", want),
            ("mib", MIB.to_string()),
            ("ns2md5", md5_of(&first_mib)),
        ],
        timeout(),
        &mut |l| match l {
            guest::Line::Info { key, .. } if key == "ns-add" && changes.is_empty() => {
                let p = serde_json::json!({"nqn": live, "volume": "second", "nsid": 2});
                changes.push((
                    "nvmf_namespace_add".into(),
                    crate::harness::rpc_at(&sock, "nvmf_namespace_add", p),
                ));
            }
            guest::Line::Info { key, .. } if key == "ns-remove" && changes.len() == 1 => {
                let p = serde_json::json!({"nqn": live, "nsid": 2});
                changes.push((
                    "nvmf_namespace_remove".into(),
                    crate::harness::rpc_at(&sock, "nvmf_namespace_remove", p),
                ));
            }
            _ => {}
        },
    );
    d.stop();
    assert_passed(
        &run,
        &[
            "modules",
            "network",
            "nvme-connect-ro",
            "nvme-ro",
            "nvme-read",
            "nvme-write-refused",
            "nvme-disconnect-ro",
            "nvme-connect-rw",
            "nvme-rw-writable",
            "nvme-rw-write",
            "nvme-ns-added",
            "nvme-ns-read",
            "nvme-ns-write",
            "nvme-ns-removed",
            "nvme-ns1-kept",
            "nvme-ns1-write",
            "nvme-disconnect-rw",
            "iscsi-login",
            "iscsi-ro",
            "iscsi-read",
            "iscsi-write-refused",
            "iscsi-logout",
            "no-ro-write",
            "kernel-log",
        ],
    );
    // The namespace changes were the host's, each answered without error, and with the
    // guest's controller connected: it was notified.
    assert_eq!(
        changes.iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>(),
        ["nvmf_namespace_add", "nvmf_namespace_remove"],
        "the guest asked for the add and the removal: {changes:?}"
    );
    for (m, r) in &changes {
        assert!(r.get("error").is_none(), "{m}: {r}");
        assert_eq!(
            r["result"]["notified_controllers"], 1,
            "{m}: the guest's controller was told: {r}"
        );
    }
    // What the guest wrote through namespace 2 is in its volume's file.
    let wrote = run
        .info("nvme-ns-write-md5")
        .expect("the guest reported namespace 2's pattern");
    assert_eq!(
        md5_prefix(&second, MIB << 20),
        wrote,
        "the second volume's file holds the pattern the guest wrote through namespace 2"
    );
    eprintln!(
        "linux read-only view guest: {MIB} MiB read per protocol, namespace 2 added, used and removed in {} s of guest time, guest {:.1} s",
        run.info("ns-change-s").unwrap_or("?"),
        run.elapsed.as_secs_f64()
    );
}

/// The failover scenario (`tools/guest/linux/failover.sh`) against sites a and b; site a
/// restarts with its state, or, when `wiped`, without it.
pub(crate) fn failover_guest(test: &str, wiped: bool) {
    let Some(kit) = guest::kit_or_skip(test) else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let w = WitnessProc::start(root.path(), KEY, None);
    let (pa, pb) = (free_port(), free_port());
    let img = |me: &str| root.path().join(format!("{me}.img"));
    let state = |me: &str| root.path().join(format!("{me}-state"));
    let site = |me: &str, peer: &str, listen: u16, peer_port: u16| {
        let d = root.path().join(me);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::create_dir_all(state(me)).unwrap();
        let volume = format!(
            "backend='uring'\nsize='64MiB'\npath='{}'",
            img(me).display()
        );
        let mirror = format!("state_dir='{}'", state(me).display());
        Server::start_nvmf(
            &d,
            "",
            &witness_site_body(
                root.path(),
                me,
                peer,
                listen,
                peer_port,
                w.addr,
                &mirror,
                &volume,
            ),
        )
    };
    let mut a = site("a", "b", pa, pb);
    let b = site("b", "a", pb, pa);
    crate::mirror::wait_up(&a);
    crate::mirror::wait_up(&b);
    // (Half the other scenarios' pattern: two guests of this kind run in the suite.)
    let mib = (pattern_mib() / 2).max(8);
    // Site a comes back where the guest's controller reconnects to.
    a.keep_nvmf_addr();
    let (mut killed, mut restarted) = (false, false);
    let name = if wiped {
        "nvme-failover-wiped"
    } else {
        "nvme-failover"
    };
    let run = guest::boot_acting(
        kit,
        name,
        "failover",
        &two_site_args(&a, &b, mib, [("killat", "4")]),
        timeout(),
        &mut |l| match l {
            guest::Line::Info { key, .. } if key == "kill-a" && !killed => {
                a.kill();
                killed = true;
                eprintln!("linux guest {name}: site a killed (SIGKILL)");
            }
            guest::Line::Info { key, .. } if key == "restart-a" && killed && !restarted => {
                if wiped {
                    std::fs::remove_dir_all(state("a")).unwrap();
                    std::fs::create_dir_all(state("a")).unwrap();
                    let f = std::fs::File::create(img("a")).unwrap();
                    f.set_len(64 << 20).unwrap();
                }
                a.respawn_in_place();
                restarted = true;
                eprintln!(
                    "linux guest {name}: site a started again ({})",
                    if wiped {
                        "without its state, an empty replica"
                    } else {
                        "its state kept"
                    }
                );
            }
            _ => {}
        },
    );
    assert!(
        killed && restarted,
        "the guest asked for the kill and the restart"
    );
    assert_passed(
        &run,
        &[
            BOTH_PATHS.as_slice(),
            &[
                "write-through-kill",
                "b-optimized",
                "a-back",
                "disconnect-b-1",
                "read-at-a",
                "controllers-gone",
                "kernel-log",
            ],
        ]
        .concat(),
    );
    let want = run
        .info("pattern-md5")
        .expect("the guest reported its pattern's md5");
    for site in ["a", "b"] {
        assert_eq!(
            md5_prefix(&img(site), mib << 20),
            want,
            "site {site}'s replica holds the guest's pattern"
        );
    }
    for s in [&a, &b] {
        assert_eq!(crate::harness::mirror_state(s), "up", "mirroring again");
    }
    eprintln!(
        "linux NVMe/TCP {name} guest: {mib} MiB, site a killed at MiB 4 after {} rewrite(s), longest MiB write {} ms, guest {:.1} s",
        run.info("rewrites").unwrap_or("?"),
        run.info("longest-mib-ms").unwrap_or("?"),
        run.elapsed.as_secs_f64()
    );
    drop((a, b, w));
}

/// The link-cut scenario (`tools/guest/linux/nvme-split.sh`), test
/// `nvmf_ana::linux_nvme_multipath_moves_a_fenced_volume_to_its_leaders_site_when_the_link_is_cut`.
pub(crate) fn split_guest(test: &str) {
    use crate::nvmf_ana::{NQN, Proxy, site_sized, wait_claims, wait_states};
    let Some(kit) = guest::kit_or_skip(test) else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let w = crate::failover::WitnessProc::start_with_grace(
        root.path(),
        crate::failover::KEY,
        None,
        crate::harness::PATIENCE,
    );
    let (pa, pb) = (free_port(), free_port());
    // Each site reaches the other only through a proxy, so the link can be cut.
    let (to_a, to_b) = (Proxy::new(pa), Proxy::new(pb));
    // The host NQN tools/guest/linux/nvme-paths.sh gives the guest, at site b.
    let hosts = "[[host]]\nname='nqn.2014-08.org.nvmexpress:uuid:5d1a6c1e-7a1b-4c55-9a57-2b1c0e1f7e11'\nsite='b'\n";
    let mib = (pattern_mib() / 8).max(4);
    let size = format!("{}MiB", mib);
    let a = site_sized(root.path(), "a", "b", pa, to_b.port, &w, "", hosts, &size);
    let mut b = site_sized(root.path(), "b", "a", pb, to_a.port, &w, "", hosts, &size);
    for s in [&a, &b] {
        wait_states(s, &[("va", "up"), ("vb", "up")]);
    }
    wait_claims(root.path());
    let mut args = two_site_args(&a, &b, mib, [("switchat", "1"), ("cutat", "2")]);
    args.retain(|(k, _)| *k != "nqn");
    args.push(("nqn", NQN.to_string()));
    let (mut cut, mut restored, mut stopped) = (false, false, None);
    // The switchover's call runs on a thread of its own (its answer and end), so the guest's
    // lines keep being read meanwhile; `stopping`: when the guest said its writes around it end.
    let mut switching: Option<std::thread::JoinHandle<(serde_json::Value, Instant)>> = None;
    let mut stopping: Option<Instant> = None;
    let run = guest::boot_acting(
        kit,
        "nvme-split",
        "nvme-split",
        &args,
        timeout(),
        &mut |l| match l {
            guest::Line::Info { key, .. } if key == "switch-vb" && switching.is_none() => {
                // Asked at site b, the leader, while the guest writes vb through it.
                let socket = b.socket.clone();
                switching = Some(std::thread::spawn(move || {
                    let r = crate::harness::rpc_at(
                        &socket,
                        "mirror_switchover",
                        serde_json::json!({"volume": "vb", "to": "a"}),
                    );
                    eprintln!("linux guest nvme-split: vb switched over to a: {r}");
                    (r, Instant::now())
                }));
            }
            guest::Line::Info { key, .. } if key == "switch-stopping" && stopping.is_none() => {
                stopping = Some(Instant::now());
            }
            guest::Line::Info { key, .. } if key == "cut-link" && !cut => {
                to_a.pause();
                to_b.pause();
                cut = true;
                eprintln!("linux guest nvme-split: the link between the sites cut");
            }
            guest::Line::Info { key, .. } if key == "restore-link" && cut && !restored => {
                to_a.resume();
                to_b.resume();
                restored = true;
                eprintln!("linux guest nvme-split: the link restored");
            }
            guest::Line::Info { key, .. } if key == "stop-b" && restored && stopped.is_none() => {
                // Mirroring again (the guest saw the paths): site b's clean stop.
                let clean = b.stop();
                eprintln!("linux guest nvme-split: site b stopped (SIGTERM), exit 0: {clean}");
                stopped = Some(clean);
            }
            _ => {}
        },
    );
    assert_passed(
        &run,
        &[
            "modules",
            "network",
            "connect-a",
            "connect-b",
            "multipath",
            "paths-switched",
            "write-through-cut",
            "paths-split",
            "paths-mirroring",
            "disconnect-a-1",
            "va-at-b",
            "vb-at-b",
            "reconnect-a",
            "write-through-stop",
            "va-at-a",
            "vb-at-a",
            "controllers-gone",
            "kernel-log",
        ],
    );
    // The switchover moved vb's leadership, and its answer came, while the guest rewrote vb
    // (before the guest said those writes end).
    let (r, answered) = switching
        .expect("the guest asked for the switchover")
        .join()
        .unwrap();
    let vol = &r["result"]["volumes"][0];
    assert_eq!(
        (vol["leader"].as_str(), vol["changed"].as_bool()),
        (Some("a"), Some(true)),
        "vb's switchover: {r}"
    );
    let stopping = stopping.expect("the guest said when its switchover writes end");
    assert!(
        answered < stopping,
        "the switchover was answered {:?} after the guest's writes around it ended",
        answered - stopping
    );
    assert_eq!(stopped, Some(true), "site b's clean stop (exit 0)");
    // Site a serves both volumes alone since site b's stop; site b, started again, is caught up
    // (it missed the rewrites acknowledged after its stop).
    wait_states(&a, &[("va", "survivor"), ("vb", "survivor")]);
    b.respawn_in_place();
    for s in [&a, &b] {
        crate::harness::wait_until(
            Duration::from_secs(30),
            || {
                let st = s.rpc("mirror_status");
                st.as_array()
                    .is_some_and(|v| v.iter().all(|m| m["state"] == "up"))
            },
            || format!("both volumes up at {}", s.config.display()),
        );
    }
    for v in ["va", "vb"] {
        let want = run
            .info(&format!("{v}-md5"))
            .expect("the guest reported its patterns' md5");
        for site in ["a", "b"] {
            let got = md5_prefix(&root.path().join(format!("{site}-{v}.img")), mib << 20);
            assert_eq!(
                got, want,
                "site {site}'s replica of {v} holds the guest's pattern"
            );
        }
    }
    eprintln!(
        "linux NVMe/TCP nvme-split guest: {mib} MiB per volume, vb switched over ({}), link cut at MiB 2 among {} rewrite(s) of it (va+vb), longest MiB write {} ms, guest {:.1} s",
        run.info("switch-window").unwrap_or("?"),
        run.info("rewrites").unwrap_or("?"),
        run.info("longest-mib-ms").unwrap_or("?"),
        run.elapsed.as_secs_f64()
    );
    drop((a, b, w, to_a, to_b));
}

/// The iSCSI failover scenario (`tools/guest/linux/iscsi-failover.sh`), test
/// `iscsi_alua::linux_iscsi_initiator_carries_on_at_site_b_when_site_a_is_killed`.
pub(crate) fn iscsi_failover_guest() {
    let test = "linux_iscsi_initiator_carries_on_at_site_b_when_site_a_is_killed";
    let Some(kit) = guest::kit_or_skip(test) else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let w = WitnessProc::start(root.path(), KEY, None);
    let (pa, pb) = (free_port(), free_port());
    let img = |me: &str| root.path().join(format!("{me}.img"));
    // The initiator name tools/guest/linux/iscsi-paths.sh gives the guest, at site b.
    let hosts = "[[host]]\nname='iqn.2026-12.io.twinblk.test:linux-guest'\nsite='b'\n";
    let site = |me: &str, peer: &str, listen: u16, peer_port: u16| {
        let d = root.path().join(me);
        std::fs::create_dir_all(&d).unwrap();
        let volume = format!(
            "backend='uring'\nsize='64MiB'\npath='{}'",
            img(me).display()
        );
        let body = witness_site_body(
            root.path(),
            me,
            peer,
            listen,
            peer_port,
            w.addr,
            "",
            &volume,
        );
        let port = free_port();
        let s = Server::start_nvmf(
            &d,
            &format!("[iscsi]\nlisten=['127.0.0.1:{port}']\n"),
            &format!("{body}{hosts}"),
        );
        (s, port)
    };
    let (mut a, ia) = site("a", "b", pa, pb);
    let (b, ib) = site("b", "a", pb, pa);
    crate::mirror::wait_up(&a);
    crate::mirror::wait_up(&b);
    let mib = (pattern_mib() / 2).max(8);
    let mut killed = false;
    let run = guest::boot_acting(
        kit,
        "iscsi-failover",
        "iscsi-failover",
        &[
            ("host", "10.0.2.2".to_string()),
            ("portb", ib.to_string()),
            ("porta", ia.to_string()),
            ("iqn", "iqn.2026-11.io.twinblk:vol0".to_string()),
            ("mib", mib.to_string()),
            ("killat", "4".to_string()),
        ],
        timeout(),
        &mut |l| {
            if matches!(l, guest::Line::Info { key, .. } if key == "kill-a") && !killed {
                a.kill();
                killed = true;
                eprintln!("linux guest iscsi-failover: site a killed (SIGKILL)");
            }
        },
    );
    assert!(killed, "the guest asked for the kill");
    let logout = format!("logout-{ib}");
    assert_passed(
        &run,
        &[
            "modules",
            "network",
            "login-b",
            "alua",
            "write-through-kill",
            &logout,
            "disks-gone",
            "kernel-log",
        ],
    );
    let want = run
        .info("pattern-md5")
        .expect("the guest reported its pattern's md5");
    assert_eq!(
        md5_prefix(&img("b"), mib << 20),
        want,
        "site b's replica holds the guest's pattern"
    );
    assert_eq!(crate::harness::mirror_state(&b), "survivor");
    eprintln!(
        "linux iSCSI failover guest: {mib} MiB, site a killed at MiB 4 after {} rewrite(s), longest MiB write {} ms, path after: {}, guest {:.1} s",
        run.info("rewrites").unwrap_or("?"),
        run.info("longest-mib-ms").unwrap_or("?"),
        run.info("access-state-after").unwrap_or("?"),
        run.elapsed.as_secs_f64()
    );
    drop((a, b, w));
}
