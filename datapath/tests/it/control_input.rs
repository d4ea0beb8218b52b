//! Operator input at the control socket (docs/control.md): a wrong request is refused with an
//! error naming what is wrong and changes nothing; the connection keeps serving.

use crate::harness::{PATIENCE, wait_until};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// An in-process daemon with an NBD front end and a control socket in `dir`.
fn daemon(dir: &Path) -> (twinblk::Daemon, PathBuf) {
    let sock = dir.join("ctl.sock");
    let text = format!(
        "[reactor]\ncores=[0]\npin=false\nwait='adaptive'\n[nbd]\nlisten=['127.0.0.1:0']\n[nvmf]\nlisten=['127.0.0.1:0']\n[iscsi]\nlisten=['127.0.0.1:0']\n[control]\nsocket='{}'\n[runtime]\nmax_volumes=4\n[[volume]]\nname='base'\nbackend='malloc'\nsize='4MiB'\n",
        sock.display()
    );
    let cfg = twinblk::control::config::Config::from_toml(&text).expect("test config");
    (twinblk::Daemon::start(&cfg).expect("daemon starts"), sock)
}

use crate::harness::rpc_at as rpc;

#[test]
fn unknown_parameters_are_refused_by_name_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, sock) = daemon(dir.path());
    let cases = [
        // A typo of "read_only": the export would be served writable.
        (
            "nbd_export_add",
            json!({"name": "e", "volume": "base", "readonly": true}),
            "readonly",
        ),
        // A typo of "block_size": the volume would get 512-byte blocks.
        (
            "volume_create",
            json!({"name": "v", "backend": "malloc", "size": "1M", "blocksize": 4096}),
            "blocksize",
        ),
        (
            "nvmf_subsystem_add",
            json!({"nqn": "nqn.2026-11.io.test:x", "allowed_host": ["nqn.h"]}),
            "allowed_host",
        ),
        (
            "mirror_resync",
            json!({"volume": "base", "rate": 5}),
            "rate",
        ),
        (
            "cdp_bookmark",
            json!({"volume": "base", "name": "b", "replce": true}),
            "replce",
        ),
        ("daemon_info", json!({"verbose": true}), "verbose"),
    ];
    for (method, p, key) in cases {
        let r = rpc(&sock, method, p.clone());
        let e = r
            .get("error")
            .unwrap_or_else(|| panic!("{method} {p} succeeded: {r}"));
        assert_eq!(e["code"], -32602, "{method} {p}: {r}");
        let m = e["message"].as_str().unwrap();
        assert!(
            m.contains(&format!("unknown parameter \"{key}\"")),
            "{method} {p}: {m}"
        );
    }
    let exports = rpc(&sock, "export_list", Value::Null)["result"].clone();
    assert!(
        !exports.to_string().contains("\"e\""),
        "an export was added: {exports}"
    );
    let vols = rpc(&sock, "volume_list", Value::Null)["result"].clone();
    assert_eq!(vols.as_array().unwrap().len(), 1, "{vols}");
    // Params that are not an object are refused for every method, never read as none.
    let r = rpc(&sock, "mirror_takeover", json!(["base"]));
    assert_eq!(r["error"]["code"], -32602, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("params must be an object"),
        "{r}"
    );
}

#[test]
fn an_over_long_or_non_utf8_request_line_gets_one_error_and_the_connection_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, sock) = daemon(dir.path());
    let s = UnixStream::connect(&sock).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let big = vec![b'x'; 10 << 20];
        w.write_all(&big).unwrap();
        w.write_all(b"\n").unwrap();
        w.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"volume_list\"}\n")
            .unwrap();
        w.write_all(b"\xff\xfe\n").unwrap();
        w.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":8,\"method\":\"volume_list\"}\n")
            .unwrap();
    });
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut r = BufReader::new(s);
    let mut next = || {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        serde_json::from_str::<Value>(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    };
    let first = next();
    assert_eq!(first["error"]["code"], -32600, "{first}");
    assert!(
        first["error"]["message"]
            .as_str()
            .unwrap()
            .contains("64 KiB"),
        "{first}"
    );
    let second = next();
    assert_eq!(
        second["id"], 7,
        "one error for the long line, then the next request: {second}"
    );
    assert!(second["result"].is_array(), "{second}");
    let third = next();
    assert_eq!(third["error"]["code"], -32700, "{third}");
    let fourth = next();
    assert_eq!(fourth["id"], 8, "{fourth}");
    writer.join().unwrap();
}

#[test]
fn cdp_enable_refuses_the_segment_size_and_retention_the_config_file_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, sock) = daemon(dir.path());
    let journal = dir.path().join("journal");
    let cases = [
        // Retention by size below two segments: the active segment is never consolidated.
        (
            json!({"volume": "base", "dir": journal, "segment_size": "4MiB", "retention_bytes": "4MiB", "wait": 5}),
            "retention_bytes",
        ),
        (
            json!({"volume": "base", "dir": journal, "retention_bytes": "0", "wait": 5}),
            "retention_bytes",
        ),
        // Over the config file's 1 TiB (a directory that cannot be created: nothing is
        // allocated when the check is missing).
        (
            json!({"volume": "base", "dir": "/proc/twinblk-no/such", "segment_size": "2TiB"}),
            "1 TiB",
        ),
    ];
    for (p, want) in cases {
        let r = rpc(&sock, "cdp_enable", p.clone());
        let e = r
            .get("error")
            .unwrap_or_else(|| panic!("cdp_enable {p} succeeded: {r}"));
        assert_eq!(e["code"], -32602, "{p}: {r}");
        let m = e["message"].as_str().unwrap();
        assert!(m.contains(want), "{p}: {m}");
    }
    let st = rpc(&sock, "cdp_status", Value::Null)["result"].clone();
    assert_eq!(st, json!([]), "CDP was switched on: {st}");
}

/// `cdp_enable`'s `group` took a number as its text (`5` became group "5") and any string,
/// the empty one or one with control characters too, as a group to bookmark, view and
/// restore together.
#[test]
fn cdp_enable_refuses_a_group_that_is_not_a_name() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, sock) = daemon(dir.path());
    let journal = dir.path().join("journal");
    for g in [
        json!(5),
        json!(""),
        json!("a\nb"),
        json!(["g"]),
        json!(true),
    ] {
        let p = json!({"volume": "base", "dir": journal, "group": g, "wait": 5});
        let r = rpc(&sock, "cdp_enable", p.clone());
        let e = r
            .get("error")
            .unwrap_or_else(|| panic!("cdp_enable {p} succeeded: {r}"));
        assert_eq!(e["code"], -32602, "{p}: {r}");
        assert!(e["message"].as_str().unwrap().contains("group"), "{p}: {r}");
    }
    let st = rpc(&sock, "cdp_status", Value::Null)["result"].clone();
    assert_eq!(st, json!([]), "CDP was switched on: {st}");
}

#[test]
fn cdp_view_open_refuses_a_name_of_the_wrong_type_or_length_instead_of_using_view() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, sock) = daemon(dir.path());
    let journal = dir.path().join("journal");
    let r = rpc(
        &sock,
        "cdp_enable",
        json!({"volume": "base", "dir": journal, "wait": 10}),
    );
    assert!(r.get("error").is_none(), "{r}");
    // A bad "sandbox" too: were "name" left out, that would be the refusal (and no child
    // is started either way).
    for name in [json!(5), json!(["v"]), json!("v".repeat(65))] {
        let p = json!({"volume": "base", "time_ns": 1, "nbd": "127.0.0.1:1", "name": name, "sandbox": "x"});
        let r = rpc(&sock, "cdp_view_open", p.clone());
        let m = r["error"]["message"].as_str().unwrap_or_default();
        assert!(m.contains("\"name\""), "{p}: {r}");
    }
    let jobs = rpc(&sock, "cdp_jobs", Value::Null)["result"].clone();
    assert_eq!(jobs, json!([]), "{jobs}");
}

/// Some process waits for an `flock` of `path` (a blocked request, `->`, in /proc/locks on
/// its inode, whose field is MAJOR:MINOR:INODE).
fn flock_waited(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(path).unwrap().ino().to_string();
    std::fs::read_to_string("/proc/locks")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("->"))
        .any(|l| {
            l.split_whitespace()
                .any(|f| f.matches(':').count() == 2 && f.rsplit(':').next() == Some(&ino))
        })
}

#[test]
fn a_group_bookmark_refused_on_one_volume_is_set_on_none_even_when_the_name_comes_meanwhile() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ctl.sock");
    let (ja, jb) = (dir.path().join("ja"), dir.path().join("jb"));
    let text = format!(
        "[reactor]\ncores=[0]\npin=false\n[nbd]\nlisten=['127.0.0.1:0']\n[nvmf]\nlisten=['127.0.0.1:0']\n[control]\nsocket='{}'\n\
         [[volume]]\nname='a'\nbackend='malloc'\nsize='4MiB'\ngroup='g'\n[volume.cdp]\ndir='{}'\nsegment_size='4MiB'\n\
         [[volume]]\nname='b'\nbackend='malloc'\nsize='4MiB'\ngroup='g'\n[volume.cdp]\ndir='{}'\nsegment_size='4MiB'\n",
        sock.display(),
        ja.display(),
        jb.display()
    );
    let cfg = twinblk::control::config::Config::from_toml(&text).expect("test config");
    let _d = twinblk::Daemon::start(&cfg).expect("daemon starts");
    // Another writer holds b's bookmarks (as a concurrent `cdp_bookmark` of b alone would).
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(jb.join("bookmarks.lock"))
        .unwrap();
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let s2 = sock.clone();
    let call = std::thread::spawn(move || {
        rpc(
            &s2,
            "cdp_bookmark",
            json!({"group": "g", "name": "upgrade"}),
        )
    });
    // The call waits for b's lock (waited for: on a loaded machine the call starts late).
    let lock_path = jb.join("bookmarks.lock");
    wait_until(
        PATIENCE,
        || flock_waited(&lock_path),
        || "the group bookmark never waited for b's lock".to_string(),
    );
    // Meanwhile the other writer sets the same name on b, then lets go.
    std::fs::write(jb.join("bookmarks"), "upgrade\t1\n").unwrap();
    drop(lock);
    let r = call.join().unwrap();
    assert!(r.get("error").is_some(), "the name is set on b: {r}");
    let marks = rpc(&sock, "cdp_bookmarks", json!({"volume": "a"}))["result"].clone();
    assert_eq!(
        marks[0]["bookmarks"],
        json!({}),
        "refused, yet set on a: {r} / {marks}"
    );
}

/// A daemon in `dir` with a 512 MiB RAM volume `big` (and `more` volumes), and a client
/// thread whose `cdp_enable` of `big` (waiting for its catch-up, up to 120 s) started, its
/// catch-up running: the daemon, its control socket, when the thread started, and its answer
/// with how long it took.
#[allow(clippy::type_complexity)]
fn enabling(
    dir: &Path,
    more: &str,
) -> (
    twinblk::Daemon,
    PathBuf,
    std::time::Instant,
    std::thread::JoinHandle<(Value, std::time::Duration)>,
) {
    let sock = dir.join("ctl.sock");
    let text = format!(
        "[reactor]\ncores=[0]\npin=false\n[nbd]\nlisten=['127.0.0.1:0']\n[nvmf]\nlisten=['127.0.0.1:0']\n[control]\nsocket='{}'\n\
         [[volume]]\nname='big'\nbackend='malloc'\nsize='512MiB'\n{more}",
        sock.display()
    );
    let cfg = twinblk::control::config::Config::from_toml(&text).expect("test config");
    let d = twinblk::Daemon::start(&cfg).expect("daemon starts");
    let s2 = sock.clone();
    let journal = dir.join("j");
    let t = std::time::Instant::now();
    let enable = std::thread::spawn(move || {
        let r = rpc(
            &s2,
            "cdp_enable",
            json!({"volume": "big", "dir": journal, "segment_size": "64MiB", "wait": 120}),
        );
        (r, t.elapsed())
    });
    // Its catch-up runs (waited for: on a loaded machine the call starts late; one that ended
    // already is the caller's failure to report).
    let running = || rpc(&sock, "cdp_status", Value::Null)["result"][0]["catching_up"] == true;
    wait_until(
        PATIENCE,
        || running() || enable.is_finished(),
        || "cdp_enable's catch-up never ran".to_string(),
    );
    (d, sock, t, enable)
}

#[test]
fn other_changes_are_served_while_cdp_enable_waits_for_its_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, sock, t, enable) = enabling(
        dir.path(),
        "[[volume]]\nname='small'\nbackend='malloc'\nsize='1MiB'\n",
    );
    let r = rpc(
        &sock,
        "nbd_export_add",
        json!({"name": "e", "volume": "small"}),
    );
    let other = t.elapsed();
    assert!(r.get("error").is_none(), "{r}");
    let (r, enabled) = enable.join().unwrap();
    assert!(r.get("error").is_none(), "{r}");
    assert_eq!(r["result"]["catching_up"], false, "{r}");
    assert!(
        other < enabled,
        "nbd_export_add waited for cdp_enable's catch-up: answered after {other:?}, cdp_enable after {enabled:?}"
    );
}

#[test]
fn nqns_iqns_and_host_names_with_nul_or_control_characters_are_refused() {
    // A NUL ends the name on the wire (NVMe's NUL-padded NQN fields, iSCSI's NUL-separated
    // text keys): a host could never name such a subsystem, and a SendTargets answer
    // listing such a target would be broken for every initiator.
    let dir = tempfile::tempdir().unwrap();
    let (_d, sock) = daemon(dir.path());
    let cases = [
        (
            "nvmf_subsystem_add",
            json!({"nqn": "nqn.2026-11.io.test:a\u{0}b"}),
        ),
        (
            "nvmf_subsystem_add",
            json!({"nqn": "nqn.2026-11.io.test:a\u{1b}[2J"}),
        ),
        (
            "nvmf_subsystem_add",
            json!({"nqn": "nqn.2026-11.io.test:ok", "allowed_hosts": ["nqn.h\u{0}"]}),
        ),
        (
            "iscsi_target_add",
            json!({"iqn": "iqn.2026-11.io.test:a\u{0}b"}),
        ),
        (
            "iscsi_target_add",
            json!({"iqn": "iqn.2026-11.io.test:ok", "allowed_initiators": ["iqn.i\u{7}"]}),
        ),
    ];
    for (method, p) in cases {
        let r = rpc(&sock, method, p.clone());
        assert_eq!(r["error"]["code"], -32602, "{method} {p}: {r}");
    }
    let subs = rpc(&sock, "nvmf_subsystems", Value::Null)["result"].clone();
    assert!(
        !subs.to_string().contains("io.test"),
        "a subsystem was added: {subs}"
    );
    // The same names without the bad character are taken (the refusals were for it).
    for (method, p) in [
        (
            "nvmf_subsystem_add",
            json!({"nqn": "nqn.2026-11.io.test:ok", "allowed_hosts": ["nqn.h"]}),
        ),
        (
            "iscsi_target_add",
            json!({"iqn": "iqn.2026-11.io.test:ok", "allowed_initiators": ["iqn.i"]}),
        ),
    ] {
        let r = rpc(&sock, method, p.clone());
        assert!(r.get("error").is_none(), "{method} {p}: {r}");
    }
}

#[test]
fn a_cdp_disable_during_cdp_enables_catch_up_ends_the_enables_wait() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, sock, _, enable) = enabling(dir.path(), "");
    let d = rpc(&sock, "cdp_disable", json!({"volume": "big"}));
    assert!(d.get("error").is_none(), "{d}");
    let (r, took) = enable.join().unwrap();
    // Its answer says the catch-up was cut short by the switch-off.
    assert!(
        r["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("switched off")),
        "{r}"
    );
    assert!(
        took < std::time::Duration::from_secs(30),
        "cdp_enable waited {took:?}: {r}"
    );
    let st = rpc(&sock, "cdp_status", Value::Null)["result"].clone();
    assert_eq!(st[0]["journal"], "off", "{st}");
}

#[test]
fn volume_create_refuses_a_size_past_what_a_file_offset_can_address_as_a_bad_size() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, sock) = daemon(dir.path());
    for size in [
        json!(1u64 << 63),
        json!(u64::MAX / 512 * 512),
        json!("8388608TiB"),
    ] {
        let p = json!({"name": "huge", "backend": "malloc", "size": size});
        let r = rpc(&sock, "volume_create", p.clone());
        assert_eq!(r["error"]["code"], -32602, "{p}: {r}");
        assert!(
            r["error"]["message"].as_str().unwrap().contains("at most"),
            "{p}: {r}"
        );
    }
}

/// One call, asked again while the daemon answers that it has too many control clients
/// ("try again": the previous round's connections may not be reaped yet on a loaded machine;
/// seen once in a full run), 10 s at most.
fn rpc_unless_busy(sock: &Path, method: &str, p: Value) -> Value {
    let t = std::time::Instant::now();
    loop {
        let r = rpc(sock, method, p.clone());
        let busy = r["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("too many control clients"));
        if !busy || t.elapsed() > std::time::Duration::from_secs(10) {
            return r;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn the_same_change_asked_by_many_clients_at_once_is_made_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, sock) = daemon(dir.path());
    for (method, p) in [
        (
            "volume_create",
            json!({"name": "twice", "backend": "malloc", "size": "1M"}),
        ),
        (
            "nbd_export_add",
            json!({"name": "twice", "volume": "twice"}),
        ),
        (
            "nvmf_subsystem_add",
            json!({"nqn": "nqn.2026-11.io.test:twice"}),
        ),
    ] {
        let answers: Vec<Value> = (0..8)
            .map(|_| {
                let (s, p) = (sock.clone(), p.clone());
                std::thread::spawn(move || rpc_unless_busy(&s, method, p))
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        let ok = answers.iter().filter(|r| r.get("error").is_none()).count();
        assert_eq!(ok, 1, "{method}: {answers:?}");
        for r in answers.iter().filter(|r| r.get("error").is_some()) {
            assert_eq!(r["error"]["code"], -32602, "{method}: {r}");
            assert!(
                r["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("exists already"),
                "{method}: {r}"
            );
        }
    }
    let vols = rpc(&sock, "volume_list", Value::Null)["result"].clone();
    assert_eq!(vols.as_array().unwrap().len(), 2, "{vols}");
}

#[test]
fn a_line_that_is_json_but_not_a_request_gets_32600_and_the_connection_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, sock) = daemon(dir.path());
    let mut s = UnixStream::connect(&sock).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    for (line, code) in [
        ("[1,2]", -32600),
        ("\"daemon_info\"", -32600),
        ("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":5}", -32600),
        ("{\"jsonrpc\":\"2.0\",\"id\":1", -32700),
        (
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"no_such\"}",
            -32601,
        ),
    ] {
        writeln!(s, "{line}").unwrap();
        let mut a = String::new();
        r.read_line(&mut a).unwrap();
        let a: Value = serde_json::from_str(&a).unwrap();
        assert_eq!(a["error"]["code"], code, "{line}: {a}");
    }
    writeln!(
        s,
        "{{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"volume_list\"}}"
    )
    .unwrap();
    let mut a = String::new();
    r.read_line(&mut a).unwrap();
    assert!(a.contains("\"result\""), "{a}");
}

#[test]
fn sixteen_idle_clients_leave_room_for_none_and_one_leaving_frees_a_place() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, sock) = daemon(dir.path());
    let mut idle: Vec<UnixStream> = (0..16)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    // Each is served by then (its thread counted): one request each.
    for s in &mut idle {
        writeln!(
            s,
            "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"volume_list\"}}"
        )
        .unwrap();
        let mut a = String::new();
        BufReader::new(s.try_clone().unwrap())
            .read_line(&mut a)
            .unwrap();
        assert!(a.contains("result"), "{a}");
    }
    let r = rpc(&sock, "volume_list", Value::Null);
    assert_eq!(r["error"]["code"], -32000, "{r}");
    drop(idle.pop());
    let t = std::time::Instant::now();
    loop {
        let r = rpc(&sock, "volume_list", Value::Null);
        if r.get("result").is_some() {
            break;
        }
        assert!(t.elapsed() < PATIENCE, "no place after a client left: {r}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// CPU time (user + system, clock ticks) of the thread of process `pid` named `name`.
fn thread_ticks(pid: u32, name: &str) -> u64 {
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        let comm = std::fs::read_to_string(t.join("comm")).unwrap_or_default();
        if comm.trim() == name {
            let stat = std::fs::read_to_string(t.join("stat")).unwrap();
            let f: Vec<&str> = stat
                .rsplit_once(')')
                .unwrap()
                .1
                .split_whitespace()
                .collect();
            return f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        }
    }
    panic!("no thread {name:?} in {pid}");
}

#[test]
fn the_control_thread_does_not_spin_while_the_daemon_is_out_of_file_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let s = crate::harness::Server::start(
        dir.path(),
        "[[volume]]\nname='v'\nbackend='malloc'\nsize='4MiB'\n",
    );
    let pid = s.pid();
    let _ = s.rpc("volume_list");
    // The lowest free descriptor number: a limit there leaves none to open.
    let fds: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    let open = (0..).find(|n| !fds.contains(n)).unwrap();
    let limit = |n: &str| {
        let st = std::process::Command::new("prlimit")
            .args(["--pid", &pid.to_string(), &format!("--nofile={n}")])
            .status()
            .unwrap();
        assert!(st.success(), "prlimit {n}");
    };
    let soft = String::from_utf8(
        std::process::Command::new("prlimit")
            .args([
                "--pid",
                &pid.to_string(),
                "--nofile",
                "--raw",
                "--noheadings",
                "--output",
                "SOFT",
            ])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    limit(&format!("{open}:"));
    // A client the daemon cannot accept (no descriptor left): it waits in the backlog.
    let sock = dir.path().join(format!("ctl-{}.sock", std::process::id()));
    let waiting = UnixStream::connect(&sock).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let t0 = thread_ticks(pid, "control");
    std::thread::sleep(std::time::Duration::from_secs(1));
    let spent = thread_ticks(pid, "control") - t0;
    limit(&format!("{}:", soft.trim()));
    drop(waiting);
    // Served again once descriptors are free.
    let _ = s.rpc("volume_list");
    assert!(
        spent < 20,
        "the control thread spent {spent} ticks of the last 100 retrying accept"
    );
}

#[test]
fn an_over_long_last_line_without_a_newline_is_still_answered() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, sock) = daemon(dir.path());
    let mut s = UnixStream::connect(&sock).unwrap();
    s.write_all(&vec![b'x'; 70 << 10]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut a = String::new();
    BufReader::new(s).read_line(&mut a).unwrap();
    assert!(a.contains("-32600"), "{a:?}");
}

/// `[reactor] background_cores` naming a CPU the daemon may not run on is refused at start,
/// with the CPU and those it may use (here the starting thread is confined to its first
/// CPU and names another).
#[test]
fn background_cores_outside_the_processs_cpus_are_refused_at_start() {
    let ours = twinblk::runtime::Housekeeping::off(&[])
        .expect("this thread's CPUs")
        .cpus();
    if ours.len() < 2 {
        eprintln!("one CPU: no CPU to name outside it (skipped)");
        return;
    }
    let (first, other) = (ours[0], ours[1]);
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[reactor]\ncores=[{first}]\nbackground_cores=[{other}]\n[nbd]\nlisten=['127.0.0.1:0']\n[nvmf]\nlisten=[]\n[control]\nsocket='{}'\n[[volume]]\nname='v'\nbackend='malloc'\nsize='4MiB'\n",
        dir.path().join("ctl.sock").display()
    );
    let cfg = twinblk::control::config::Config::from_toml(&text).expect("test config");
    let e = std::thread::spawn(move || {
        twinblk::runtime::pin_to_core(first).expect("pin");
        twinblk::Daemon::start(&cfg).err().map(|e| e.to_string())
    })
    .join()
    .unwrap()
    .expect("refused");
    assert!(
        e.contains(&format!("names CPU {other}")) && e.contains(&format!("[{first}]")),
        "{e}"
    );
}

#[test]
fn volume_create_refuses_another_volumes_backing_file_and_a_file_of_a_cdp_directory() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ctl.sock");
    let (disk, j) = (dir.path().join("disk.img"), dir.path().join("j"));
    let text = format!(
        "[reactor]\ncores=[0]\npin=false\nwait='adaptive'\n[nbd]\nlisten=['127.0.0.1:0']\n[nvmf]\nlisten=['127.0.0.1:0']\n[iscsi]\nlisten=['127.0.0.1:0']\n[control]\nsocket='{}'\n[runtime]\nmax_volumes=6\n[[volume]]\nname='disk'\nbackend='uring'\nsize='4MiB'\npath='{}'\ncreate=true\n[[volume]]\nname='journaled'\nbackend='malloc'\nsize='4MiB'\n[volume.cdp]\ndir='{}'\nsegment_size='4MiB'\n",
        sock.display(),
        disk.display(),
        j.display()
    );
    let cfg = twinblk::control::config::Config::from_toml(&text).expect("test config");
    let _d = twinblk::Daemon::start(&cfg).expect("daemon starts");
    let create = |name: &str, path: &Path| {
        rpc(
            &sock,
            "volume_create",
            json!({"name": name, "backend": "uring", "size": "4M", "path": path, "create": true}),
        )
    };
    let rt = dir.path().join("rt.img");
    let r = create("rt", &rt);
    assert!(r.get("error").is_none(), "{r}");
    // Another volume's file, by its path or by another path to it: the two would write over
    // each other's blocks.
    // (Answered "in use", -32020, naming the volume whose file or history it is.)
    for (path, want) in [
        (disk.clone(), "is the file of volume \"disk\""),
        (
            dir.path().join(".").join("disk.img"),
            "is the file of volume \"disk\"",
        ),
        (rt.clone(), "is the file of volume \"rt\""),
        (
            j.join("base.img"),
            "history directory of volume \"journaled\"",
        ),
        (j.join("v.img"), "history directory of volume \"journaled\""),
    ] {
        let r = create("other", &path);
        assert_eq!(r["error"]["code"], -32020, "{}: {r}", path.display());
        let m = r["error"]["message"].as_str().unwrap();
        assert!(m.contains(want), "{}: {m}", path.display());
    }
    assert!(!j.join("v.img").exists());
    // Once the run-time volume is gone its file can be used again.
    let r = rpc(&sock, "volume_delete", json!({"name": "rt"}));
    assert!(r.get("error").is_none(), "{r}");
    let r = create("again", &rt);
    assert!(r.get("error").is_none(), "{r}");
    // Nor is a history started in a directory that holds a volume's file.
    let holder = dir.path().join("holder");
    std::fs::create_dir(&holder).unwrap();
    let inner = holder.join("base.img");
    let r = create("inner", &inner);
    assert!(r.get("error").is_none(), "{r}");
    let r = rpc(
        &sock,
        "cdp_enable",
        json!({"volume": "again", "dir": holder, "segment_size": "4MiB", "wait": 5}),
    );
    assert!(r.get("error").is_some(), "{r}");
    let m = r["error"]["message"].as_str().unwrap();
    assert!(m.contains("base.img"), "{m}");
    assert!(!holder.join("cdp.meta").exists());
}

#[test]
fn run_time_names_that_differ_only_in_case_from_one_in_use_are_refused() {
    // iSCSI names are case-insensitive: volume `BASE`'s default target would be `base`'s.
    let dir = tempfile::tempdir().unwrap();
    let (_d, sock) = daemon(dir.path());
    let r = rpc(
        &sock,
        "volume_create",
        json!({"name": "BASE", "backend": "malloc", "size": "1M"}),
    );
    assert_eq!(r["error"]["code"], -32602, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("only in case"),
        "{r}"
    );
    let r = rpc(
        &sock,
        "iscsi_target_add",
        json!({"iqn": "iqn.2026-11.io.test:t"}),
    );
    assert!(r["error"].is_null(), "{r}");
    let r = rpc(
        &sock,
        "iscsi_target_add",
        json!({"iqn": "iqn.2026-11.io.test:T"}),
    );
    assert_eq!(r["error"]["code"], -32602, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("only in case"),
        "{r}"
    );
}
