//! `twinblk-ctl volume|export|nvmf|iscsi` against a running site (`twinblk serve` started in
//! this process, every front end on loopback): a volume and an NBD export created with the
//! commands serve verified I/O, refusals carry their documented exit codes (11 in use, 12 from
//! the config file, 1 bad parameters, 2 usage, 4 unreachable) and change nothing, and NVMe-oF
//! subsystems/namespaces/hosts and iSCSI targets/LUNs go through create/remove round trips.

use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use twinblk::daemon::Proto;
use twinblk_tools::drill::nbd::NbdClient;

mod common;

use common::{ctl_at as ctl, text};

/// Run and check the exit code and that the output says `says`; the output.
fn expect(socket: &Path, args: &[&str], code: i32, says: &str) -> String {
    let o = ctl(socket, args);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(code), "{args:?}: {t}");
    assert!(t.contains(says), "{args:?} should say {says:?}: {t}");
    t
}

/// `--json` output of a command that succeeds.
fn json(socket: &Path, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let o = ctl(socket, &a);
    assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", text(&o)))
}

fn daemon(dir: &Path) -> (twinblk::Daemon, std::path::PathBuf) {
    let sock = dir.join("ctl.sock");
    let cfg = twinblk::control::config::Config::from_toml(&format!(
        "[reactor]\ncores=[0]\npin=false\n[nbd]\nlisten=['127.0.0.1:0']\n[nvmf]\nlisten=['127.0.0.1:0']\n\
         [iscsi]\nlisten=['127.0.0.1:0']\n[control]\nsocket='{}'\n[runtime]\nmax_volumes=8\n\
         [[volume]]\nname='base'\nbackend='malloc'\nsize='4MiB'\n",
        sock.display()
    ))
    .unwrap();
    let d = twinblk::Daemon::start(&cfg).expect("daemon starts");
    (d, sock)
}

fn addr(d: &twinblk::Daemon, p: Proto) -> SocketAddr {
    d.listeners().into_iter().find(|(x, _)| *x == p).unwrap().1
}

fn volumes(sock: &Path) -> Vec<String> {
    json(sock, &["volume", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect()
}

/// Deterministic bytes for `seed`.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn wait_no_hosts(sock: &Path) {
    let t = Instant::now();
    while !twinblk_tools::ctl::call(sock, "host_list", Value::Null)
        .unwrap()
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(t.elapsed() < Duration::from_secs(10), "hosts never left");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_volume_and_nbd_export_made_with_twinblk_ctl_serve_io_and_refusals_have_their_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut d, sock) = daemon(dir.path());
    let s = sock.as_path();
    let nbd = addr(&d, Proto::Nbd).to_string();

    // Created with a size written as in the config file; the text says it is not saved.
    let t = expect(
        s,
        &["volume", "create", "rt1", "--size", "8MiB"],
        0,
        "volume rt1 created: 8.0 MiB (8388608 bytes)",
    );
    assert!(t.contains("lasts until the daemon stops"), "{t}");
    let j = json(
        s,
        &[
            "volume",
            "create",
            "rt2",
            "--size",
            "1G",
            "--block-size",
            "4096",
        ],
    );
    assert_eq!(j["size"], 1u64 << 30);
    assert_eq!(j["block_size"], 4096);
    assert!(
        j["lasts"]
            .as_str()
            .unwrap()
            .contains("until the daemon stops")
    );
    assert_eq!(volumes(s), ["base", "rt1", "rt2"]);

    // Bad parameters: exit 1 with the daemon's reason, nothing created.
    expect(
        s,
        &["volume", "create", "rt1", "--size", "8MiB"],
        1,
        "a volume named \"rt1\" exists already",
    );
    expect(
        s,
        &["volume", "create", "bad", "--size", "12XB"],
        1,
        "unknown size unit",
    );
    expect(
        s,
        &["volume", "create", "bad", "--size", "1000"],
        1,
        "not a non-zero multiple of the block size 512",
    );
    expect(
        s,
        &[
            "volume",
            "create",
            "bad",
            "--size",
            "1M",
            "--block-size",
            "1024",
        ],
        1,
        "give 512 or 4096",
    );
    expect(
        s,
        &["volume", "create", "bad/x", "--size", "1M"],
        1,
        "give 1 to 64 of",
    );
    // A wrong command line never reaches the daemon: exit 2.
    expect(
        s,
        &[
            "volume",
            "create",
            "bad",
            "--size",
            "1M",
            "--backend",
            "uring",
        ],
        2,
        "--path",
    );
    expect(
        s,
        &[
            "volume", "create", "bad", "--size", "1M", "--path", "/tmp/x",
        ],
        2,
        "--backend uring",
    );
    assert_eq!(ctl(s, &["volume", "create", "bad"]).status.code(), Some(2));
    assert_eq!(volumes(s), ["base", "rt1", "rt2"]);
    // A socket nobody listens on: exit 4.
    expect(
        &dir.path().join("nobody.sock"),
        &["volume", "list"],
        4,
        "cannot reach",
    );

    // Exported, then written and read back through NBD by two connections.
    let t = expect(
        s,
        &["export", "add", "rt1", "--volume", "rt1"],
        0,
        "NBD export rt1 added: volume rt1",
    );
    assert!(t.contains("lasts until the daemon stops"), "{t}");
    expect(s, &["export", "list"], 0, "run time");
    let list = json(s, &["export", "list"]);
    let e = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "rt1")
        .unwrap_or_else(|| panic!("rt1 not listed: {list}"));
    assert_eq!((&e["volume"], &e["runtime"]), (&"rt1".into(), &true.into()));
    let mut a = NbdClient::connect(&nbd, "rt1", Duration::from_secs(10)).unwrap();
    assert_eq!(a.size(), 8 << 20);
    let data = pattern(7, 256 << 10);
    a.write(3 << 20, &data).unwrap();
    let mut b = NbdClient::connect(&nbd, "rt1", Duration::from_secs(10)).unwrap();
    assert_eq!(b.read(3 << 20, data.len() as u32).unwrap(), data);
    assert_eq!(a.read(0, 4096).unwrap(), vec![0u8; 4096]);

    // In use: delete refused while exported (11), removal refused while connected (11, with
    // the --force hint); nothing changed, the clients still read.
    let t = expect(s, &["volume", "delete", "rt1"], 11, "still exported");
    assert!(t.contains("NBD export \"rt1\""), "{t}");
    let t = expect(s, &["export", "remove", "rt1"], 11, "2 connection(s)");
    assert!(t.contains("again with --force"), "{t}");
    assert_eq!(a.read(3 << 20, 4096).unwrap(), data[..4096]);
    assert!(volumes(s).contains(&"rt1".to_string()));
    // From the config file: 12, both for its export and its volume.
    let t = expect(s, &["export", "remove", "base"], 12, "config file");
    assert!(t.contains("nothing changed"), "{t}");
    expect(s, &["volume", "delete", "base"], 12, "config file");
    // The same codes through `call`.
    let o = ctl(s, &["call", "volume_delete", r#"{"name": "rt1"}"#]);
    assert_eq!(o.status.code(), Some(11), "{}", text(&o));

    // --force closes the clients; then the volume goes, and its name is free.
    expect(
        s,
        &["export", "remove", "rt1", "--force"],
        0,
        "NBD export rt1 removed; 2 connection(s) closed",
    );
    assert!(a.read(0, 4096).is_err(), "a closed client still reads");
    drop((a, b));
    wait_no_hosts(s);
    expect(s, &["export", "remove", "rt1"], 1, "no NBD export named");
    expect(s, &["volume", "delete", "rt1"], 0, "volume rt1 deleted");
    expect(
        s,
        &["volume", "delete", "rt1"],
        1,
        "no volume named \"rt1\"",
    );
    assert_eq!(volumes(s), ["base", "rt2"]);
    let j = json(s, &["volume", "create", "rt1", "--size", "4M"]);
    assert_eq!(j["size"], 4 << 20);

    // A file volume: a relative --path is the shell's, made absolute.
    let o = Command::new(env!("CARGO_BIN_EXE_twinblk-ctl"))
        .current_dir(dir.path())
        .args([
            "--socket",
            sock.to_str().unwrap(),
            "volume",
            "create",
            "file1",
        ])
        .args(["--size", "2MiB", "--backend", "uring", "--path", "f1.img"])
        .args(["--create"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        std::fs::metadata(dir.path().join("f1.img")).unwrap().len(),
        2 << 20
    );
    expect(
        s,
        &[
            "volume",
            "create",
            "file2",
            "--size",
            "2MiB",
            "--backend",
            "uring",
            "--path",
            "/nonexistent/dir/f.img",
        ],
        1,
        "does not exist",
    );
    expect(s, &["volume", "delete", "file1"], 0, "volume file1 deleted");
    d.stop();
}

#[test]
fn nvmf_and_iscsi_round_trips_through_twinblk_ctl() {
    use twinblk_tools::nvmf::{Controller, Host, Opts};
    let dir = tempfile::tempdir().unwrap();
    let (mut d, sock) = daemon(dir.path());
    let s = sock.as_path();
    let nqn = "nqn.2026-11.io.twinblk.test:rt";
    let h1 = "nqn.2026-11.io.twinblk.test:host1";
    let h2 = "nqn.2026-11.io.twinblk.test:host2";
    expect(
        s,
        &["volume", "create", "nv", "--size", "4MiB"],
        0,
        "created",
    );

    // A subsystem open to host1 only, with the volume as namespace 3.
    let t = expect(
        s,
        &["nvmf", "subsystem", "add", nqn, "--allow", h1],
        0,
        &format!("NVMe-oF subsystem {nqn} added (no namespace yet); allowed hosts: {h1}"),
    );
    assert!(t.contains("lasts until the daemon stops"), "{t}");
    expect(s, &["nvmf", "subsystem", "add", nqn], 1, "exists already");
    expect(
        s,
        &[
            "nvmf",
            "namespace",
            "add",
            nqn,
            "--volume",
            "nv",
            "--nsid",
            "3",
        ],
        0,
        "namespace 3 added; namespaces now: 3=nv",
    );
    expect(
        s,
        &["nvmf", "namespace", "add", nqn, "--volume", "nope"],
        1,
        "no volume named \"nope\"",
    );
    expect(
        s,
        &["nvmf", "subsystem", "list"],
        0,
        &format!("{nqn} (run time): namespaces 3=nv; allowed hosts {h1}"),
    );
    let subs = json(s, &["nvmf", "subsystem", "list"]);
    let sub = subs["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["nqn"] == nqn)
        .cloned()
        .unwrap_or_else(|| panic!("{nqn} not listed: {subs}"));
    assert_eq!(sub["runtime"], true);
    assert_eq!(sub["namespaces"][0]["nsid"], 3);
    assert_eq!(sub["namespaces"][0]["volume"], "nv");
    // The configured volume's subsystem: its namespaces are the config file's (12).
    let base = subs["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["runtime"] == false)
        .and_then(|x| x["nqn"].as_str())
        .expect("a configured subsystem")
        .to_string();
    expect(
        s,
        &["nvmf", "namespace", "add", &base, "--volume", "nv"],
        12,
        "config file",
    );
    expect(
        s,
        &["nvmf", "subsystem", "remove", &base],
        12,
        "config file",
    );

    // Verified I/O through the namespace as host1.
    let opts = Opts {
        host: Host {
            nqn: h1.into(),
            ..Host::default()
        },
        ..Opts::default()
    };
    let nvmf = addr(&d, Proto::Nvmf);
    let c = Controller::connect(nvmf, nqn, &opts).unwrap();
    let mut q = c.io_queue(1, 8).unwrap();
    let data = pattern(11, 64 << 10);
    q.write(3, 100, &data, 512, false).unwrap();
    assert_eq!(
        q.read(3, 100, (data.len() / 512) as u32, 512).unwrap(),
        data
    );
    // Connected: the volume is in use (11); a namespace change reaches the connected host
    // without --force (its controller is notified, not disconnected: docs/nvmf.md, "Namespace
    // changes"), and I/O to the removed namespace is refused on the same queue until it is
    // added again.
    expect(s, &["volume", "delete", "nv"], 11, "namespace 3 of");
    assert_eq!(q.read(3, 100, 8, 512).unwrap(), data[..4096]);
    expect(
        s,
        &["nvmf", "namespace", "remove", nqn, "--nsid", "3"],
        0,
        "namespace 3 removed; 1 connected controller(s) notified; namespaces now: none",
    );
    assert!(
        q.read(3, 100, 8, 512).is_err(),
        "namespace 3 read after its removal"
    );
    expect(
        s,
        &[
            "nvmf",
            "namespace",
            "add",
            nqn,
            "--volume",
            "nv",
            "--nsid",
            "3",
        ],
        0,
        "namespace 3 added; 1 connected controller(s) notified; namespaces now: 3=nv",
    );
    assert_eq!(q.read(3, 100, 8, 512).unwrap(), data[..4096]);

    // Allowed hosts: host2 added, host1 taken out with its connections.
    expect(
        s,
        &["nvmf", "host", "allow", nqn, h2],
        0,
        &format!("allowed hosts now: {h1}, {h2}"),
    );
    expect(
        s,
        &["nvmf", "host", "disallow", nqn, h1, "--force"],
        0,
        &format!("allowed hosts now: {h2}"),
    );
    drop((q, c));
    wait_no_hosts(s);
    assert!(
        Controller::connect(nvmf, nqn, &opts).is_err(),
        "host1 still admitted"
    );
    expect(
        s,
        &["nvmf", "host", "disallow", nqn, h2],
        1,
        "last allowed host",
    );

    // Removed: namespace, then subsystem; the volume is free again.
    expect(
        s,
        &["nvmf", "namespace", "remove", nqn, "--nsid", "3"],
        0,
        "namespace 3 removed; namespaces now: none",
    );
    expect(
        s,
        &["nvmf", "subsystem", "remove", nqn],
        0,
        &format!("NVMe-oF subsystem {nqn} removed"),
    );
    let subs = json(s, &["nvmf", "subsystem", "list"]);
    assert!(
        !subs["subsystems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["nqn"] == nqn),
        "{subs}"
    );
    expect(
        s,
        &["nvmf", "subsystem", "remove", nqn],
        1,
        "no NVMe-oF subsystem",
    );

    // iSCSI: a target, a LUN, refusals, then both removed.
    let iqn = "iqn.2026-11.io.twinblk.test:rt";
    let t = expect(
        s,
        &[
            "iscsi",
            "target",
            "add",
            iqn,
            "--allow",
            "iqn.1994-05.com.example:i1",
        ],
        0,
        &format!(
            "iSCSI target {iqn} added (no LUN yet, no CHAP); allowed initiators: iqn.1994-05.com.example:i1"
        ),
    );
    assert!(t.contains("lasts until the daemon stops"), "{t}");
    expect(s, &["iscsi", "target", "add", iqn], 1, "exists already");
    expect(
        s,
        &["iscsi", "target", "add", "bad-name"],
        1,
        "must start with",
    );
    let j = json(
        s,
        &["iscsi", "lun", "add", iqn, "--volume", "nv", "--lun", "2"],
    );
    assert_eq!(j["lun"], 2);
    assert_eq!(j["luns"][0]["volume"], "nv");
    expect(
        s,
        &["iscsi", "lun", "add", iqn, "--volume", "nv"],
        0,
        "LUN 0 added; LUNs now: 0=nv, 2=nv",
    );
    expect(
        s,
        &["iscsi", "lun", "add", iqn, "--volume", "nv", "--lun", "2"],
        1,
        "has a LUN 2 already",
    );
    expect(s, &["volume", "delete", "nv"], 11, "iSCSI LUN 2 of");
    expect(
        s,
        &["iscsi", "lun", "remove", iqn, "--lun", "2"],
        0,
        "LUN 2 removed; LUNs now: 0=nv",
    );
    expect(
        s,
        &["iscsi", "lun", "remove", iqn, "--lun", "2"],
        1,
        "has no LUN 2",
    );
    expect(
        s,
        &["iscsi", "target", "remove", iqn],
        0,
        &format!("iSCSI target {iqn} removed"),
    );
    // Gone: its LUNs cannot be changed any more, and the name can be added again.
    expect(
        s,
        &["iscsi", "lun", "add", iqn, "--volume", "nv"],
        1,
        "no iSCSI target",
    );
    expect(s, &["volume", "delete", "nv"], 0, "volume nv deleted");
    d.stop();
}
