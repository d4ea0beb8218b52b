//! Control methods asked at the wrong time (docs/control.md): on a daemon that is stopping.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// An in-process daemon with a control socket in `dir` and a RAM volume `j` journaled in
/// `dir/cdpj`.
fn daemon(dir: &Path) -> twinblk::Daemon {
    let text = format!(
        "[reactor]\ncores=[0]\npin=false\nwait='adaptive'\n[nbd]\nlisten=['127.0.0.1:0']\n\
         [control]\nsocket='{}'\n\
         [[volume]]\nname='j'\nbackend='malloc'\nsize='8MiB'\nblock_size=4096\n\
         [volume.cdp]\ndir='{}'\nsegment_size='4MiB'\n",
        dir.join("ctl.sock").display(),
        dir.join("cdpj").display()
    );
    let cfg = twinblk::control::config::Config::from_toml(&text).expect("test config");
    twinblk::Daemon::start(&cfg).expect("daemon starts")
}

/// One request on an open connection, and its answer.
fn ask(s: &mut BufReader<UnixStream>, method: &str, params: Value) -> Value {
    let req = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    writeln!(s.get_mut(), "{req}").unwrap();
    let mut line = String::new();
    s.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not an answer ({e}): {line:?}"))
}

fn alive(pid: u64) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// A client connected before the daemon stopped kept being served after it: its
/// `cdp_restore` (or `cdp_view_open`) started a child after the daemon had stopped its
/// children, so the child outlived the daemon (a view serving, and holding back its history's
/// consolidation). (In this in-process daemon the child is the test binary, which refuses
/// the arguments: a view's answer is then its failure to start, a restore's a pid.)
#[test]
fn a_client_connected_before_the_stop_gets_no_view_or_restore_started_after_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = daemon(tmp.path());
    // One client per request (a refused client is closed), each served once before.
    let mut clients: Vec<_> = (0..2)
        .map(|_| BufReader::new(UnixStream::connect(tmp.path().join("ctl.sock")).unwrap()))
        .collect();
    let mut seq = Value::Null;
    for c in &mut clients {
        seq = ask(c, "cdp_status", Value::Null)["result"][0]["durable_seq"].clone();
        assert!(seq.is_u64(), "{seq}");
    }
    d.stop();
    for ((method, p), c) in [
        (
            "cdp_view_open",
            json!({"volume": "j", "seq": seq, "nbd": "127.0.0.1:0"}),
        ),
        (
            "cdp_restore",
            json!({"volume": "j", "seq": seq, "out": tmp.path().join("out.img")}),
        ),
    ]
    .into_iter()
    .zip(&mut clients)
    {
        let r = ask(c, method, p);
        if let Some(pid) = r["result"]["pid"].as_u64() {
            let left = alive(pid);
            if left {
                // SAFETY: the child this test's request started.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            panic!("{method} started pid {pid} after the stop (still running: {left}): {r}");
        }
        let e = &r["error"];
        assert_eq!(e["code"], -32000, "{method}: {r}");
        assert!(
            e["message"].as_str().unwrap().contains("stopping"),
            "{method}: {r}"
        );
    }
    assert!(!tmp.path().join("out.img").exists());
}

/// A view the daemon started kept serving after the daemon was killed (SIGKILL, a crash):
/// only a clean stop stopped its children, so an orphaned view went on serving an old point
/// and holding its history's consolidation back. A child now stops once its daemon is gone.
#[test]
fn a_view_stops_when_its_daemon_is_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let body = format!(
        "[reactor]\ncores=[0]\npin=false\n[[volume]]\nname='j'\nbackend='malloc'\nsize='1MiB'\n\
         [volume.cdp]\ndir='{}'\nsegment_size='4MiB'\n",
        tmp.path().join("cdpj").display()
    );
    let mut s = crate::harness::Server::start(tmp.path(), &body);
    let port = crate::harness::free_port();
    let r = s.rpc_with(
        "cdp_view_open",
        json!({"volume": "j", "seq": 1, "nbd": format!("127.0.0.1:{port}")}),
    );
    assert!(r["error"].is_null(), "{r}");
    let pid = r["result"]["pid"].as_u64().unwrap();
    assert!(alive(pid));
    s.kill();
    let t = std::time::Instant::now();
    while alive(pid) && t.elapsed() < std::time::Duration::from_secs(15) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let left = alive(pid);
    if left {
        // SAFETY: the view this test's request started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    assert!(
        !left,
        "view {pid} still running 15 s after its daemon was killed"
    );
}
