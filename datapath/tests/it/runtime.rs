//! Run-time creation and deletion of volumes, exports, subsystems and targets through the
//! control socket (docs/control.md, "Run-time changes"): verified I/O through each front end
//! on objects created at run time, refusals (in use, connected, configured, bad parameters)
//! that change nothing, forced removal closing connections while other volumes keep serving,
//! and changes under load on another volume.

use crate::harness::{PATIENCE, pattern, wait_until};
use crate::rawnbd::Client;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use twinblk::daemon::Proto;

/// An in-process daemon with every front end on loopback and a control socket in `dir`.
fn daemon(dir: &Path, cores: &str) -> (twinblk::Daemon, PathBuf) {
    let sock = dir.join("ctl.sock");
    let text = format!(
        "[reactor]\ncores={cores}\npin=false\nwait='adaptive'\n[nbd]\nlisten=['127.0.0.1:0']\n[nvmf]\nlisten=['127.0.0.1:0']\n[iscsi]\nlisten=['127.0.0.1:0']\n[control]\nsocket='{}'\n[runtime]\nmax_volumes=8\n[[volume]]\nname='base'\nbackend='malloc'\nsize='16MiB'\n",
        sock.display()
    );
    let cfg = twinblk::control::config::Config::from_toml(&text).expect("test config");
    let d = twinblk::Daemon::start(&cfg).expect("daemon starts");
    (d, sock)
}

fn addr(d: &twinblk::Daemon, p: Proto) -> SocketAddr {
    d.listeners().into_iter().find(|(x, _)| *x == p).unwrap().1
}

/// One call; the whole reply.
fn rpc(sock: &Path, method: &str, params: Value) -> Value {
    let mut s = std::os::unix::net::UnixStream::connect(sock).expect("control socket");
    let req = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    writeln!(s, "{req}").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

fn ok(sock: &Path, method: &str, params: Value) -> Value {
    let r = rpc(sock, method, params.clone());
    assert!(r.get("error").is_none(), "{method} {params}: {r}");
    r["result"].clone()
}

/// The error's (code, message); panics on success.
fn err(sock: &Path, method: &str, params: Value) -> (i64, String) {
    let r = rpc(sock, method, params.clone());
    let e = r
        .get("error")
        .unwrap_or_else(|| panic!("{method} {params} succeeded: {r}"));
    (
        e["code"].as_i64().unwrap(),
        e["message"].as_str().unwrap().to_string(),
    )
}

fn names(sock: &Path) -> Vec<String> {
    ok(sock, "volume_list", Value::Null)
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn an_nbd_export_of_a_volume_created_at_run_time_serves_verified_io_then_both_go() {
    let dir = tempfile::tempdir().unwrap();
    let (d, sock) = daemon(dir.path(), "[0,1]");
    let nbd = addr(&d, Proto::Nbd);
    let r = ok(
        &sock,
        "volume_create",
        json!({"name": "rt1", "backend": "malloc", "size": "8M"}),
    );
    assert_eq!(r["size"], 8 << 20);
    assert!(
        r["lasts"]
            .as_str()
            .unwrap()
            .contains("until the daemon stops")
    );
    ok(
        &sock,
        "nbd_export_add",
        json!({"name": "rt1", "volume": "rt1"}),
    );
    // Two connections (one per reactor: accepted round-robin) write and read each other's data.
    let mut a = Client::connect(nbd, "rt1", false);
    let mut b = Client::connect(nbd, "rt1", true);
    let data = pattern(7, 256 << 10);
    assert_eq!(a.write(1 << 20, &data), 0);
    assert_eq!(b.read(1 << 20, data.len() as u32).unwrap(), data);
    // Refused while exported, and while connected; nothing changes.
    let (code, m) = err(&sock, "volume_delete", json!({"name": "rt1"}));
    assert_eq!(code, -32020);
    assert!(
        m.contains("still exported") && m.contains("NBD export \"rt1\""),
        "{m}"
    );
    let (code, m) = err(&sock, "nbd_export_remove", json!({"name": "rt1"}));
    assert_eq!(code, -32020);
    assert!(m.contains("2 connection(s)") && m.contains("force"), "{m}");
    assert_eq!(a.read(1 << 20, 4096).unwrap(), data[..4096]);
    // The configured volume's export cannot be removed at run time.
    let (code, m) = err(&sock, "nbd_export_remove", json!({"name": "base"}));
    assert_eq!(code, -32022, "{m}");
    // After the clients leave: removed, then the volume deleted, and its name is free again.
    a.disconnect();
    b.disconnect();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !ok(&sock, "host_list", Value::Null)
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(std::time::Instant::now() < deadline, "hosts did not leave");
        std::thread::sleep(Duration::from_millis(10));
    }
    ok(&sock, "nbd_export_remove", json!({"name": "rt1"}));
    ok(&sock, "volume_delete", json!({"name": "rt1"}));
    assert_eq!(names(&sock), vec!["base"]);
    // A new volume in the freed slot starts empty (malloc) and is served.
    ok(
        &sock,
        "volume_create",
        json!({"name": "rt1", "backend": "malloc", "size": 4 << 20}),
    );
    ok(
        &sock,
        "nbd_export_add",
        json!({"name": "again", "volume": "rt1"}),
    );
    let mut c = Client::connect(nbd, "again", false);
    assert_eq!(c.read(1 << 20, 4096).unwrap(), vec![0u8; 4096]);
    c.disconnect();
}

#[test]
fn bad_parameters_are_refused_clearly_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, sock) = daemon(dir.path(), "[0]");
    let cases = [
        (
            json!({"name": "base", "backend": "malloc", "size": "4M"}),
            "exists already",
        ),
        (
            json!({"name": "z", "backend": "malloc", "size": 0}),
            "non-zero multiple",
        ),
        (
            json!({"name": "z", "backend": "malloc", "size": 4097}),
            "non-zero multiple",
        ),
        (
            json!({"name": "z", "backend": "malloc", "size": "4M", "block_size": 1000}),
            "512 or 4096",
        ),
        (
            json!({"name": "z", "backend": "tape", "size": "4M"}),
            "\"malloc\" or \"uring\"",
        ),
        (
            json!({"name": "z", "backend": "uring", "size": "4M"}),
            "needs \"path\"",
        ),
        (
            json!({"name": "z", "backend": "uring", "size": "4M", "path": "/nonexistent/twinblk/x.img"}),
            "does not exist",
        ),
        (
            json!({"name": "z", "backend": "malloc", "size": "4M", "mirror": true}),
            "configure mirrored/CDP volumes in the config file",
        ),
        (
            json!({"name": "z", "backend": "malloc", "size": "4M", "cdp": {"dir": "/tmp"}}),
            "configure mirrored/CDP volumes in the config file",
        ),
        (
            json!({"name": "", "backend": "malloc", "size": "4M"}),
            "1 to 64",
        ),
        (
            json!({"backend": "malloc", "size": "4M"}),
            "params need \"name\"",
        ),
    ];
    for (p, want) in cases {
        let (_, m) = err(&sock, "volume_create", p.clone());
        assert!(m.contains(want), "{p}: {m}");
    }
    assert_eq!(names(&sock), vec!["base"], "nothing was created");
    let (code, m) = err(
        &sock,
        "nbd_export_add",
        json!({"name": "x", "volume": "nope"}),
    );
    assert_eq!(code, -32602);
    assert!(m.contains("no volume named \"nope\""), "{m}");
    let (_, m) = err(&sock, "volume_delete", json!({"name": "nope"}));
    assert!(m.contains("no volume named"), "{m}");
    let (code, m) = err(&sock, "volume_delete", json!({"name": "base"}));
    assert_eq!(code, -32022);
    assert!(m.contains("config file"), "{m}");
    let (_, m) = err(&sock, "nvmf_subsystem_add", json!({"nqn": "bad"}));
    assert!(m.contains("nqn."), "{m}");
    let (_, m) = err(
        &sock,
        "nvmf_namespace_add",
        json!({"nqn": "nqn.2026-11.io.twinblk:base", "volume": "base"}),
    );
    assert!(m.contains("config file"), "{m}");
    let (_, m) = err(
        &sock,
        "iscsi_lun_add",
        json!({"iqn": "iqn.x:none", "volume": "base"}),
    );
    assert!(m.contains("no iSCSI target"), "{m}");
    // A uring volume on a file that does not exist yet, with create: true.
    let img = dir.path().join("new.img");
    let r = ok(
        &sock,
        "volume_create",
        json!({"name": "f", "backend": "uring", "size": "4M", "block_size": 4096, "path": img, "create": true}),
    );
    assert_eq!(r["stack"], "uring");
    // Every slot used (max_volumes = 8): the next is refused with what to do.
    for i in 0..6 {
        ok(
            &sock,
            "volume_create",
            json!({"name": format!("m{i}"), "backend": "malloc", "size": "1M"}),
        );
    }
    let (_, m) = err(
        &sock,
        "volume_create",
        json!({"name": "m9", "backend": "malloc", "size": "1M"}),
    );
    assert!(m.contains("max_volumes"), "{m}");
    ok(&sock, "volume_delete", json!({"name": "f"}));
    ok(
        &sock,
        "volume_create",
        json!({"name": "m9", "backend": "malloc", "size": "1M"}),
    );
}

#[test]
fn nvmf_subsystem_namespace_and_host_created_at_run_time_serve_io_and_force_closes() {
    use twinblk_tools::nvmf::{Controller, Host, Opts};
    let dir = tempfile::tempdir().unwrap();
    let (d, sock) = daemon(dir.path(), "[0,1]");
    let nv = addr(&d, Proto::Nvmf);
    let nqn = "nqn.2026-11.io.twinblk:rt";
    let host = "nqn.2014-08.org.example:host-rt";
    ok(
        &sock,
        "volume_create",
        json!({"name": "nv", "backend": "malloc", "size": "8M"}),
    );
    ok(
        &sock,
        "nvmf_subsystem_add",
        json!({"nqn": nqn, "allowed_hosts": ["nqn.other"]}),
    );
    let r = ok(
        &sock,
        "nvmf_namespace_add",
        json!({"nqn": nqn, "volume": "nv", "nsid": 3}),
    );
    assert_eq!(r["nsid"], 3);
    let opts = Opts {
        host: Host {
            nqn: host.into(),
            ..Host::default()
        },
        ..Opts::default()
    };
    assert!(
        Controller::connect(nv, nqn, &opts).is_err(),
        "not allowed yet"
    );
    ok(&sock, "nvmf_host_allow", json!({"nqn": nqn, "host": host}));
    let c = Controller::connect(nv, nqn, &opts).unwrap();
    let mut q = c.io_queue(1, 16).unwrap();
    let data = pattern(3, 64 << 10);
    q.write(3, 8, &data, 512, false).unwrap();
    assert_eq!(q.read(3, 8, 128, 512).unwrap(), data);
    // Refused while connected; forced: the queues are closed, the configured volume serves on.
    let (code, m) = err(&sock, "nvmf_subsystem_remove", json!({"nqn": nqn}));
    assert_eq!(code, -32020);
    assert!(m.contains(host), "{m}");
    let (code, _) = err(&sock, "volume_delete", json!({"name": "nv"}));
    assert_eq!(code, -32020);
    let r = ok(
        &sock,
        "nvmf_subsystem_remove",
        json!({"nqn": nqn, "force": true}),
    );
    assert!(r["closed_connections"].as_u64().unwrap() >= 2, "{r}");
    assert!(q.read(3, 8, 8, 512).is_err(), "the queue was closed");
    drop(q);
    drop(c);
    ok(&sock, "volume_delete", json!({"name": "nv"}));
    let base = Controller::connect(nv, "nqn.2026-11.io.twinblk:base", &Opts::default()).unwrap();
    let mut bq = base.io_queue(1, 16).unwrap();
    bq.write(1, 0, &data, 512, false).unwrap();
    assert_eq!(bq.read(1, 0, 128, 512).unwrap(), data);
}

#[test]
fn an_iscsi_target_and_lun_created_at_run_time_serve_qemu_io() {
    let dir = tempfile::tempdir().unwrap();
    let (d, sock) = daemon(dir.path(), "[0]");
    let is = addr(&d, Proto::Iscsi);
    let iqn = "iqn.2026-11.io.twinblk:rt";
    ok(
        &sock,
        "volume_create",
        json!({"name": "iv", "backend": "malloc", "size": "8M"}),
    );
    ok(&sock, "iscsi_target_add", json!({"iqn": iqn}));
    let r = ok(&sock, "iscsi_lun_add", json!({"iqn": iqn, "volume": "iv"}));
    assert_eq!(r["lun"], 0);
    let u = format!("iscsi://{is}/{iqn}/0");
    crate::harness::run(crate::iscsi::qemu_with_iscsi("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 0x6b 1M 192k",
        "-c",
        "read -P 0x6b 1M 192k",
        &u,
    ]));
    // A fresh session reads what the first wrote.
    crate::harness::run(crate::iscsi::qemu_with_iscsi("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "read -P 0x6b 1M 192k",
        "-c",
        "read -P 0 0 64k",
        &u,
    ]));
    let (code, m) = err(&sock, "volume_delete", json!({"name": "iv"}));
    assert_eq!(code, -32020);
    assert!(m.contains("iSCSI LUN 0"), "{m}");
    ok(&sock, "iscsi_lun_remove", json!({"iqn": iqn, "lun": 0}));
    ok(&sock, "iscsi_target_remove", json!({"iqn": iqn}));
    ok(&sock, "volume_delete", json!({"name": "iv"}));
}

#[test]
fn forced_removal_closes_an_nbd_client_and_changes_under_load_disturb_no_other_volume() {
    let dir = tempfile::tempdir().unwrap();
    let (d, sock) = daemon(dir.path(), "[0,1]");
    let nbd = addr(&d, Proto::Nbd);
    // Load on the configured volume for the whole test, every read verified.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut c = Client::connect(nbd, "base", true);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let off = (i % 64) * 65536;
                let data = pattern(i, 65536);
                assert_eq!(c.write(off, &data), 0, "write error on the other volume");
                assert_eq!(
                    c.read(off, 65536).unwrap(),
                    data,
                    "wrong data on the other volume"
                );
                i += 1;
                done.store(i, Ordering::Relaxed);
            }
            c.disconnect();
        })
    };
    for round in 0..5 {
        let name = format!("tmp{round}");
        ram_volume_exported(&sock, &name);
        let mut c = Client::connect(nbd, &name, false);
        assert_eq!(c.write(0, &pattern(round, 4096)), 0);
        let r = ok(
            &sock,
            "nbd_export_remove",
            json!({"name": name, "force": true}),
        );
        assert_eq!(r["closed_connections"], 1);
        assert!(
            crate::rawnbd::closed_by_server(c.stream()),
            "the forced removal closed the client"
        );
        ok(&sock, "volume_delete", json!({"name": name}));
    }
    // The other volume goes on serving: its load's next I/O is waited for (a loaded machine
    // may not give it one in a fixed 200 ms).
    let before = done.load(Ordering::Relaxed);
    wait_until(
        PATIENCE,
        || done.load(Ordering::Relaxed) > before || load.is_finished(),
        || "the other volume kept serving".to_string(),
    );
    stop.store(true, Ordering::Relaxed);
    load.join()
        .expect("the load on the other volume saw no error");
    assert!(
        done.load(Ordering::Relaxed) > before,
        "the other volume kept serving"
    );
    let stats = ok(&sock, "volume_stats", Value::Null);
    assert_eq!(stats[0]["name"], "base");
    assert_eq!(stats[0]["errors"], 0);
}

/// Hold every NBD negotiation of daemon `d` between choosing export `name` and entering
/// transmission (the test hook): returns (reached: one message per held negotiation, go on:
/// one message releases one).
fn hold_negotiations(
    d: &twinblk::Daemon,
    name: &'static str,
) -> (std::sync::mpsc::Receiver<()>, std::sync::mpsc::Sender<()>) {
    let (reached_tx, reached) = std::sync::mpsc::channel();
    let (go_on, go_rx) = std::sync::mpsc::channel::<()>();
    let (reached_tx, go_rx) = (
        std::sync::Mutex::new(reached_tx),
        std::sync::Mutex::new(go_rx),
    );
    d.nbd_exports()
        .set_negotiation_hook(Some(Arc::new(move |export: &str| {
            if export == name {
                let _ = reached_tx.lock().unwrap().send(());
                let _ = go_rx.lock().unwrap().recv_timeout(Duration::from_secs(10));
            }
        })));
    (reached, go_on)
}

#[test]
fn an_nbd_negotiation_racing_with_its_exports_removal_is_refused_or_served_never_acked_then_dropped()
 {
    // doc/proto.md (NetworkBlockDevice/nbd): NBD_OPT_GO is answered with an error reply
    // (NBD_REP_ERR_UNKNOWN for an export that is not there) or with NBD_REP_ACK, after which
    // the client is in transmission and the server serves the export; it never hangs up
    // after the ACK. NBD_OPT_EXPORT_NAME has no error reply: the server closes instead of
    // sending the export's size and flags. The hook holds the client's reactor after it chose
    // the export; the export, then its volume, are removed through the control socket.
    use crate::rawnbd::{fixed_newstyle, info_payload, read_option_reply, send_option};
    use std::io::Read;
    use twinblk::frontend::nbd::proto::{cmd, opt, rep};
    let dir = tempfile::tempdir().unwrap();
    let (d, sock) = daemon(dir.path(), "[0]");
    let nbd = addr(&d, Proto::Nbd);
    for (round, go) in [(0, true), (1, false)] {
        let name = "racy";
        ram_volume_exported(&sock, name);
        let (reached, go_on) = hold_negotiations(&d, "racy");
        let mut s = fixed_newstyle(nbd);
        if go {
            send_option(&mut s, opt::GO, &info_payload(name, &[]));
        } else {
            send_option(&mut s, opt::EXPORT_NAME, name.as_bytes());
        }
        reached
            .recv_timeout(Duration::from_secs(10))
            .expect("the negotiation reached the hook");
        // No host is registered yet: the removal does not wait for the held reactor.
        ok(&sock, "nbd_export_remove", json!({"name": name}));
        go_on.send(()).unwrap();
        d.nbd_exports().set_negotiation_hook(None);
        if go {
            let last = loop {
                let (o, t, _) = read_option_reply(&mut s);
                assert_eq!(o, opt::GO);
                if t != rep::INFO {
                    break t;
                }
            };
            if last == rep::ACK {
                // Acked: the export must be served.
                let mut c = Client { s, size: 4 << 20 };
                c.send_request(cmd::READ, 0, 9, 0, 4096, &[]);
                let mut h = [0u8; 16];
                assert!(
                    c.s.read_exact(&mut h).is_ok(),
                    "round {round}: GO was acked, then the connection was dropped"
                );
                continue;
            }
            assert_eq!(last, rep::ERR_UNKNOWN, "round {round}");
            // Still haggling: the next option is answered.
            send_option(&mut s, opt::LIST, &[]);
            loop {
                let (_, t, _) = read_option_reply(&mut s);
                if t == rep::ACK {
                    break;
                }
                assert_eq!(t, rep::SERVER, "round {round}");
            }
        } else {
            let mut b = Vec::new();
            let _ = s.read_to_end(&mut b);
            assert!(
                b.is_empty(),
                "round {round}: EXPORT_NAME of a removed export got {} byte(s) (size and flags) before the hang-up",
                b.len()
            );
        }
        // Nobody uses the volume: it goes too.
        ok(&sock, "volume_delete", json!({"name": name}));
    }
}

/// A RAM volume size far past this machine's memory (64 TiB: more than any test machine has,
/// and less than the 128 TiB a process can map, so only a memory check refuses it).
const HUGE_RAM: u64 = 64 << 40;

/// A 4 MiB RAM volume `name` created through the control socket and exported over NBD as
/// `name`.
fn ram_volume_exported(sock: &std::path::Path, name: &str) {
    ok(
        sock,
        "volume_create",
        json!({"name": name, "backend": "malloc", "size": "4M"}),
    );
    ok(
        sock,
        "nbd_export_add",
        json!({"name": name, "volume": name}),
    );
}

/// The memory the daemon holds RAM volumes against, and where that figure comes from
/// (/proc/meminfo, or a cgroup's limit where one is lower).
fn machine_memory() -> (u64, &'static str) {
    twinblk::bdev::malloc::memory_limit().expect("the machine's memory is readable")
}

#[test]
fn a_ram_volume_larger_than_the_machines_memory_is_refused_at_start_naming_both_sizes() {
    assert!(HUGE_RAM > machine_memory().0, "this machine has 64 TiB");
    let text = format!(
        "[reactor]\ncores=[0]\npin=false\nwait='adaptive'\n[nbd]\nlisten=['127.0.0.1:0']\n[nvmf]\nlisten=['127.0.0.1:0']\n[control]\nsocket=''\n[[volume]]\nname='base'\nbackend='malloc'\nsize='16MiB'\n[[volume]]\nname='huge'\nbackend='malloc'\nsize={HUGE_RAM}\n"
    );
    let cfg = twinblk::control::config::Config::from_toml(&text).expect("test config");
    let e = match twinblk::Daemon::start(&cfg) {
        Ok(_) => panic!("a {HUGE_RAM}-byte RAM volume was accepted"),
        Err(e) => e,
    };
    let mut m = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(c) = src {
        m.push_str(&format!(": {c}"));
        src = c.source();
    }
    assert!(m.contains("huge"), "{m}");
    assert!(m.contains(&HUGE_RAM.to_string()), "{m}");
    assert!(m.contains(machine_memory().1), "{m}");
    // `check-config` (the file may be meant for another machine) warns and passes.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("huge.toml");
    std::fs::write(&file, &text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_twinblk"))
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("warning: volume huge") && said.contains(&HUGE_RAM.to_string()),
        "{said}"
    );
}

#[test]
fn a_ram_volume_larger_than_the_machines_memory_is_refused_at_creation_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, sock) = daemon(dir.path(), "[0]");
    assert!(HUGE_RAM > machine_memory().0, "this machine has 64 TiB");
    let (code, m) = err(
        &sock,
        "volume_create",
        json!({"name": "huge", "backend": "malloc", "size": HUGE_RAM}),
    );
    assert_eq!(code, -32602, "{m}");
    assert!(m.contains(&HUGE_RAM.to_string()), "{m}");
    assert!(m.contains(machine_memory().1), "{m}");
    assert_eq!(names(&sock), vec!["base"], "nothing was created");
    // Sizes the machine can hold are taken and stay sparse (mapped lazily, none touched):
    // the check is per volume, so two halves of the memory are both accepted.
    let each = (machine_memory().0 / 2).next_multiple_of(4096);
    for i in 0..2 {
        ok(
            &sock,
            "volume_create",
            json!({"name": format!("half{i}"), "backend": "malloc", "size": each}),
        );
    }
}

/// NVMe details an audit found wrong, checked against a subsystem made at run time: the
/// discovery log's GENCTR moves when the subsystem table changes (a host reading it in parts
/// must see it changed; it stayed 1), Identify Namespace of an inactive NSID up to NN is a
/// zero-filled success (it was Invalid Namespace), and Set Features Volatile Write Cache with
/// WCE=0 is refused (it was accepted with no effect, so a host could stop flushing), with
/// Feature Not Changeable (the write cache cannot be turned off).
#[test]
fn nvme_discovery_generation_inactive_namespaces_and_write_cache_follow_the_spec() {
    use twinblk_tools::nvmf::{Controller, DISCOVERY_NQN, Host, Opts, Sqe};
    let dir = tempfile::tempdir().unwrap();
    let (d, sock) = daemon(dir.path(), "[0]");
    let nv = addr(&d, Proto::Nvmf);
    let opts = Opts {
        host: Host {
            nqn: "nqn.2014-08.org.example:host-audit".into(),
            ..Host::default()
        },
        ..Opts::default()
    };
    let genctr = || {
        let mut c = Controller::connect(nv, DISCOVERY_NQN, &opts).unwrap();
        let h = c.log(0x70, 0, 0, 1024).unwrap();
        u64::from_le_bytes(h[0..8].try_into().unwrap())
    };
    let before = genctr();
    let nqn = "nqn.2026-11.io.twinblk:audit";
    ok(
        &sock,
        "volume_create",
        json!({"name": "av", "backend": "malloc", "size": "8M"}),
    );
    ok(&sock, "nvmf_subsystem_add", json!({"nqn": nqn}));
    ok(
        &sock,
        "nvmf_namespace_add",
        json!({"nqn": nqn, "volume": "av", "nsid": 3}),
    );
    let after = genctr();
    assert!(
        after > before,
        "GENCTR {before} -> {after} across a new subsystem"
    );
    let mut c = Controller::connect(nv, nqn, &opts).unwrap();
    // A run-time subsystem's NN is the highest NSID it can ever have (1024, docs/nvmf.md),
    // so every NSID up to it without a namespace is inactive.
    for nsid in [1u32, 2, 4, 1024] {
        let r = c
            .admin
            .cmd(Sqe::new(0x06).nsid(nsid).cdw(10, 0), &[], 4096)
            .unwrap();
        assert_eq!(r.status, 0, "Identify Namespace of inactive NSID {nsid}");
        assert!(r.data.iter().all(|&b| b == 0), "zero-filled");
    }
    let r = c
        .admin
        .cmd(Sqe::new(0x06).nsid(1025).cdw(10, 0), &[], 4096)
        .unwrap();
    assert_eq!(r.status, 0x0B, "NSID above NN: Invalid Namespace or Format");
    let set_vwc = |c: &mut Controller, wce: u32| {
        c.admin
            .cmd(Sqe::new(0x09).cdw(10, 0x06).cdw(11, wce), &[], 0)
            .unwrap()
            .status
    };
    assert_eq!(
        set_vwc(&mut c, 0),
        0x10E,
        "disabling the write cache refused: Feature Not Changeable"
    );
    assert_eq!(set_vwc(&mut c, 1), 0, "enabling it is a no-op");
}
