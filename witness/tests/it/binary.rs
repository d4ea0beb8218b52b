//! The real `twinblk-witness` binary: memory with 1000 groups, start-up refusals, clean exit.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use twinblk_witness::{Claim, Epoch, GrantOutcome, GroupId};

use crate::harness::*;

const BIN: &str = env!("CARGO_BIN_EXE_twinblk-witness");

/// The binary under test: this build's, or `TWINBLK_WITNESS_BIN` (e.g. a release build, to
/// measure the memory of what is deployed).
fn bin() -> String {
    std::env::var("TWINBLK_WITNESS_BIN").unwrap_or_else(|_| BIN.to_owned())
}
const GROUPS: u64 = 1000;
const RSS_LIMIT_KB: u64 = 5 * 1024;

fn free_port() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr")
}

/// `stderr`: piped only where the test reads it all (a full pipe would block the witness).
fn spawn(dir: &Path, listen: SocketAddr, extra: &[&str], stderr: Stdio) -> Child {
    let key = dir.join("key");
    std::fs::write(&key, [KEY, b"\n"].concat()).expect("key file");
    Command::new(bin())
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--key-file")
        .arg(&key)
        .arg("--state")
        .arg(dir.join("witness.state"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn twinblk-witness")
}

fn status_kb(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} not in /proc/{pid}/status"))
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let ok = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(ok.success());
    let t = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_binary_with_1000_groups_stays_under_5_mb_and_exits_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = free_port();
    let mut child = spawn(
        dir.path(),
        listen,
        &["--init", "--tie-grace-ms", "500"],
        Stdio::null(),
    );
    let mut a = client(listen, 1);
    let mut b = client(listen, 2);
    let claims: Vec<Claim> = (0..GROUPS)
        .map(|g| Claim {
            group: GroupId(g),
            preferred: true,
        })
        .collect();
    a.heartbeat(&claims)
        .expect("heartbeat (waits for the witness to start)");
    for g in 0..GROUPS {
        let got = a.request_grant(GroupId(g), Epoch(0), true).expect("answer");
        assert_eq!(got, GrantOutcome::Granted { epoch: Epoch(1) }, "group {g}");
    }
    let others: Vec<Claim> = claims
        .iter()
        .map(|c| Claim {
            preferred: false,
            ..*c
        })
        .collect();
    let views = b.heartbeat(&others).expect("heartbeat");
    assert_eq!(views.len(), GROUPS as usize);
    assert!(
        views
            .iter()
            .all(|v| v.holder == Some(site(1)) && v.epoch == Epoch(1))
    );
    let rss = status_kb(child.id(), "VmRSS:");
    let hwm = status_kb(child.id(), "VmHWM:");
    println!("twinblk-witness with {GROUPS} groups: VmRSS {rss} kB, VmHWM {hwm} kB");
    assert!(rss < RSS_LIMIT_KB, "VmRSS {rss} kB");
    assert!(hwm < RSS_LIMIT_KB, "VmHWM {hwm} kB");
    let st = terminate(&mut child);
    assert!(st.success(), "exit after SIGTERM: {st:?}");
    let size = std::fs::metadata(dir.path().join("witness.state"))
        .expect("state")
        .len();
    assert_eq!(size, 36 + 2 * 16 + GROUPS * 24, "one small state file");
}

fn refused(dir: &Path, extra: &[&str]) -> String {
    let child = spawn(dir, free_port(), extra, Stdio::piped());
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(1), "must refuse to start");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_binary_refuses_a_corrupt_state_a_missing_state_and_a_short_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = refused(dir.path(), &[]);
    assert!(err.contains("--init"), "{err}");
    // A state file with a flipped bit.
    let mut t = twinblk_witness::state::Table::default();
    t.counters.insert(site(1), 5);
    let mut b = t.to_bytes();
    b[33] ^= 1;
    std::fs::write(dir.path().join("witness.state"), &b).expect("write");
    let err = refused(dir.path(), &["--init"]);
    assert!(err.contains("corrupt") && err.contains("checksum"), "{err}");
    // A 15-byte key.
    let short = dir.path().join("short.key");
    std::fs::write(&short, b"0123456789abcde\n").expect("write");
    let out = Command::new(bin())
        .args(["--key-file"])
        .arg(&short)
        .arg("--state")
        .arg(dir.path().join("other.state"))
        .arg("--init")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at least 16"), "{err}");
}

/// The operator's commands on a state file: `--show` reads it (also while a witness runs),
/// `--release-lost-holder` needs `--accept-data-loss`, refuses while a witness runs, and
/// clears the holder; `--show` then says so.
#[test]
fn the_operator_shows_and_releases_a_lost_holder() {
    use twinblk_witness::SiteId;
    use twinblk_witness::state::{GroupRec, Table};
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("witness.state");
    let mut t = Table::default();
    t.groups.insert(
        GroupId::from_name("vol0"),
        GroupRec {
            epoch: Epoch(5),
            holder: SiteId::new(2),
            preferred: SiteId::new(1),
        },
    );
    t.save(&state).expect("state");
    let run = |args: &[&str]| {
        let o = Command::new(bin())
            .arg("--state")
            .arg(&state)
            .args(args)
            .output()
            .expect("run the witness binary");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).to_string(),
        )
    };
    let (ok, out) = run(&["--show", "vol0"]);
    assert!(
        ok && out.contains("epoch 5, holder 2, preferred 1"),
        "{out}"
    );
    assert!(
        !run(&["--release-lost-holder", "vol0"]).0,
        "released without the confirmation"
    );
    // A running witness holds the file: refused, nothing changed.
    let mut w = spawn(dir.path(), free_port(), &[], Stdio::null());
    let t0 = Instant::now();
    while !dir.path().join("witness.state.lock").exists() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        run(&["--show"]).1.contains("holder 2"),
        "--show beside a running witness"
    );
    assert!(
        !run(&["--release-lost-holder", "vol0", "--accept-data-loss"]).0,
        "released while a witness runs"
    );
    let _ = w.kill();
    let _ = w.wait();
    let (ok, out) = run(&["--release-lost-holder", "vol0", "--accept-data-loss"]);
    assert!(ok && out.contains("site 2 (epoch 5) is released"), "{out}");
    let (ok, out) = run(&["--show", "vol0"]);
    assert!(
        ok && out.contains("epoch 5, holder none, preferred 1"),
        "{out}"
    );
}
