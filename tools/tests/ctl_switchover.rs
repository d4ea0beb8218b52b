//! `twinblk-ctl switchover` against a running pair on loopback (two in-process daemons, the
//! witness, the `twinblk-ctl` binary run as an operator would): the leadership moves and back,
//! `status` shows it at both sites, `--json` prints the method's result, and refusals get
//! their documented exit codes.

use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;

use std::time::{Duration, Instant};

mod common;

use common::{KEY, Witness, ctl, text};

fn site(
    dir: &Path,
    me: &str,
    peer: &str,
    port: u16,
    peer_port: u16,
    w: SocketAddr,
) -> twinblk::Daemon {
    let key = dir.join("witness.key");
    std::fs::write(&key, KEY).unwrap();
    let text = format!(
        "[reactor]\ncores=[0]\npin=false\n[nbd]\nlisten=['127.0.0.1:0']\n[nvmf]\nlisten=['127.0.0.1:0']\n\
         [control]\nsocket='{}'\n\
         [mirror]\nsite='{me}'\npeer_site='{peer}'\nlisten=['127.0.0.1:{port}']\n\
         peer='127.0.0.1:{peer_port}'\npeer_timeout_ms=10000\npeer_dead_ms=400\n\
         witness='{w}'\nwitness_key_file='{}'\nwitness_timeout_ms=1500\n\
         [[volume]]\nname='vol0'\nbackend='malloc'\nsize='4MiB'\nmirror=true\nleader='a'\n",
        dir.join(format!("{me}.sock")).display(),
        key.display(),
    );
    let cfg = twinblk::control::config::Config::from_toml(&text).expect("config");
    twinblk::Daemon::start(&cfg).expect("daemon starts")
}

fn status(sock: &Path) -> Value {
    twinblk_tools::ctl::call(sock, "mirror_status", Value::Null)
        .map(|v| v[0].clone())
        .unwrap_or_default()
}

fn wait_up(sock: &Path) {
    let t = Instant::now();
    while status(sock)["state"] != "up" {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{} never up",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn switchover_moves_the_leader_and_back_with_documented_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let w = Witness::start(dir);
    let (pa, pb) = (common::free_port(7_919), common::free_port(7_919));
    let mut a = site(dir, "a", "b", pa, pb, w.addr);
    let mut b = site(dir, "b", "a", pb, pa, w.addr);
    let (sa, sb) = (dir.join("a.sock"), dir.join("b.sock"));
    let (arg_a, arg_b) = (
        format!("--socket=a={}", sa.display()),
        format!("--socket=b={}", sb.display()),
    );
    wait_up(&sa);
    wait_up(&sb);
    // To b, asked at a.
    let o = ctl(&[&arg_a, "switchover", "vol0", "--to", "b"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("vol0: b leads now (term 1; was a)"),
        "{}",
        text(&o)
    );
    assert_eq!(status(&sa)["role"], "follower");
    assert_eq!(status(&sb)["role"], "leader");
    assert_eq!(status(&sb)["leader_term"], 1);
    let o = ctl(&[&arg_a, &arg_b, "status"]);
    let t = text(&o);
    assert!(
        t.contains("leadership at b: leader, term 1, switchover: taken over from the peer"),
        "{t}"
    );
    assert!(
        t.contains("leadership at a: follower, term 1, switchover: handed to the peer"),
        "{t}"
    );
    // Back to a, asked at b (the leader), as JSON.
    let o = ctl(&[&arg_b, "--json", "switchover", "vol0", "--to", "a"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["volumes"][0]["leader"], "a", "{v}");
    assert_eq!(v["volumes"][0]["term"], 2, "{v}");
    // Already there: 0, nothing done. By group (a volume is its own group).
    let o = ctl(&[&arg_a, "switchover", "--group", "vol0", "--to", "a"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("leads already"), "{}", text(&o));
    // Refusals: unknown volume or site 1, no target 2, unreachable 4.
    let o = ctl(&[&arg_a, "switchover", "nope", "--to", "b"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("no volume named \"nope\""),
        "{}",
        text(&o)
    );
    let o = ctl(&[&arg_a, "switchover", "vol0", "--to", "c"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let o = ctl(&[&arg_a, "switchover", "--to", "b"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = ctl(&[
        "--socket",
        "/nonexistent/x.sock",
        "switchover",
        "vol0",
        "--to",
        "b",
    ]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    // Not in sync: 3.
    b.stop();
    let t = Instant::now();
    while status(&sa)["state"] != "survivor" {
        assert!(t.elapsed() < Duration::from_secs(10), "a never survivor");
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = ctl(&[&arg_a, "switchover", "vol0", "--to", "b"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("not up and in sync"), "{}", text(&o));
    a.stop();
}
