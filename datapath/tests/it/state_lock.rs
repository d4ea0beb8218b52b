//! One daemon per state directory (datapath/src/daemon/state_lock.rs): a second daemon started
//! on a state directory in use is refused at its start, naming the directory and the holder's
//! pid, and the first serves on; the lock goes with the process that held it, also when it
//! was killed with SIGKILL.

use crate::failover::{KEY, WitnessProc, persistent_pair, witness_site_body};
use crate::harness::{PATIENCE, free_port, pattern, wait_mirror_state};
use crate::rawnbd::Client;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Run `twinblk serve --config CONFIG` and wait for it to exit (killed, and the test failed,
/// if it is still running after [`PATIENCE`]): its exit status and standard error.
fn serve_until_exit(config: &Path) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_twinblk"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn twinblk");
    let t = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return (st, err);
        }
        if t.elapsed() > PATIENCE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "a second daemon on a state directory in use still runs after {PATIENCE:?} ({})",
                config.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A second daemon whose `[mirror] state_dir` is site a's (its own ports, socket and file)
/// started as site a: it exits at once with an error naming the directory and a's pid, and
/// writes nothing there; a and b serve on and stay in sync. Stopped cleanly, or killed with
/// SIGKILL, a site leaves no lock behind: it starts again on its directory.
#[test]
fn a_second_daemon_on_a_state_dir_in_use_is_refused_and_the_lock_dies_with_its_holder() {
    let root = tempfile::tempdir().unwrap();
    let w = WitnessProc::start(root.path(), KEY, None);
    let (pa, pb) = (free_port(), free_port());
    let (a, b) = persistent_pair(root.path(), pa, pb, w.addr);
    wait_mirror_state(&a, "up", PATIENCE);
    wait_mirror_state(&b, "up", PATIENCE);
    let mut c = Client::connect(a.addr, "vol0", false);
    assert_eq!(c.write(0, &pattern(1, 4096)), 0);
    let state_a = root.path().join("state-a");
    let before: Vec<(std::ffi::OsString, Vec<u8>)> = {
        let mut v: Vec<_> = std::fs::read_dir(&state_a)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name(), std::fs::read(e.path()).unwrap())
            })
            .collect();
        v.sort();
        v
    };
    // The intruder: site a's configuration with its own listeners, socket and file.
    let x = root.path().join("x");
    std::fs::create_dir_all(&x).unwrap();
    let body = witness_site_body(
        root.path(),
        "a",
        "b",
        free_port(),
        pb,
        w.addr,
        &format!("state_dir='{}'", state_a.display()),
        &format!(
            "backend='uring'\nsize='16MiB'\npath='{}'",
            x.join("x.img").display()
        ),
    );
    let config = x.join("twinblk.toml");
    std::fs::write(
        &config,
        format!(
            "[nbd]\nlisten=['127.0.0.1:0']\n[nvmf]\nlisten=['127.0.0.1:0']\n[control]\nsocket='{}'\n{body}",
            x.join("ctl.sock").display()
        ),
    )
    .unwrap();
    let (st, err) = serve_until_exit(&config);
    eprintln!("the second daemon: {st}, {err}");
    assert!(!st.success(), "{err}");
    for want in [
        state_a.display().to_string(),
        format!("process {} holds", a.pid()),
        "[mirror] state_dir".to_string(),
    ] {
        assert!(err.contains(&want), "{want:?} not in: {err}");
    }
    // The first serves on, in sync with its peer.
    assert_eq!(c.write(4096, &pattern(2, 4096)), 0);
    assert_eq!(
        c.read(0, 8192).unwrap(),
        [pattern(1, 4096), pattern(2, 4096)].concat()
    );
    let mut cb = Client::connect(b.addr, "vol0", false);
    assert_eq!(
        cb.read(0, 8192).unwrap(),
        [pattern(1, 4096), pattern(2, 4096)].concat()
    );
    wait_mirror_state(&a, "up", PATIENCE);
    wait_mirror_state(&b, "up", PATIENCE);
    let after: Vec<_> = {
        let mut v: Vec<_> = std::fs::read_dir(&state_a)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        after,
        before.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        "the second daemon made files in the state directory"
    );
    drop((c, cb));
    // SIGKILL: the kernel drops the lock with the process; a daemon starts there again.
    let mut a = a;
    a.kill();
    let a = a.respawn();
    // A clean stop: likewise.
    let b = b.restart();
    wait_mirror_state(&a, "up", PATIENCE);
    wait_mirror_state(&b, "up", PATIENCE);
    let mut c = Client::connect(b.addr, "vol0", false);
    assert_eq!(
        c.read(0, 8192).unwrap(),
        [pattern(1, 4096), pattern(2, 4096)].concat()
    );
    let (mut a, mut b) = (a, b);
    assert!(a.stop() && b.stop(), "clean stop failed");
}

/// The NVMe/TCP and iSCSI state directories are locked too (one directory named by both
/// sections once): a second daemon on either is refused, naming the section and this
/// process's pid (both run in it), and the lock is released by the first one's stop.
#[test]
fn the_nvmf_and_iscsi_state_dirs_are_locked_too() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let config = |n: &str, nvmf: bool, iscsi: bool| {
        let dir = |on: bool| {
            if on {
                format!("state_dir='{}'\n", state.display())
            } else {
                String::new()
            }
        };
        let text = format!(
            "[reactor]\ncores=[0]\npin=false\n[nbd]\nlisten=['127.0.0.1:0']\n\
             [nvmf]\nlisten=['127.0.0.1:0']\n{}[iscsi]\nlisten=['127.0.0.1:0']\n{}\
             [control]\nsocket='{}'\n[[volume]]\nname='v'\nbackend='malloc'\nsize='4MiB'\n",
            dir(nvmf),
            dir(iscsi),
            tmp.path().join(format!("{n}.sock")).display()
        );
        twinblk::control::config::Config::from_toml(&text).expect("test config")
    };
    let mut first = twinblk::Daemon::start(&config("first", true, true)).expect("first starts");
    for (n, nvmf, iscsi, section) in [
        ("n", true, false, "[nvmf] state_dir"),
        ("i", false, true, "[iscsi] state_dir"),
    ] {
        let e = match twinblk::Daemon::start(&config(n, nvmf, iscsi)) {
            Ok(_) => panic!("a second daemon started on {section} in use"),
            Err(e) => format!("{:#}", anyhow::Error::from(e)),
        };
        for want in [
            section.to_string(),
            state.display().to_string(),
            format!("process {} holds", std::process::id()),
        ] {
            assert!(e.contains(&want), "{want:?} not in: {e}");
        }
    }
    first.stop();
    let mut d = twinblk::Daemon::start(&config("n", true, false)).expect("released at the stop");
    d.stop();
}

/// `twinblk cdp rollback --yield-to-peer` writes a replica state: refused while a daemon holds
/// the mirror's state directory (before, it went on to read and change the state file under
/// the running daemon, which checked only a control socket that was not configured).
#[test]
fn a_rollbacks_yield_is_refused_while_a_daemon_holds_the_state_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, key) = (tmp.path().join("state"), tmp.path().join("key"));
    std::fs::write(&key, KEY).unwrap();
    let text = format!(
        "[reactor]\ncores=[0]\npin=false\n[nbd]\nlisten=['127.0.0.1:0']\n[nvmf]\nlisten=[]\n\
         [control]\nsocket=''\n\
         [mirror]\nsite='a'\npeer_site='b'\nlisten=['127.0.0.1:{}']\npeer='127.0.0.1:{}'\n\
         witness_key_file='{}'\nstate_dir='{}'\n\
         [[volume]]\nname='vol0'\nbackend='uring'\nsize='4MiB'\npath='{}'\ncreate=true\nmirror=true\n",
        free_port(),
        free_port(),
        key.display(),
        state.display(),
        tmp.path().join("a.img").display()
    );
    let config = tmp.path().join("a.toml");
    std::fs::write(&config, &text).unwrap();
    let cfg = twinblk::control::config::Config::from_toml(&text).expect("test config");
    let mut d = twinblk::Daemon::start(&cfg).expect("the site starts");
    let out = Command::new(env!("CARGO_BIN_EXE_twinblk"))
        .args(["cdp", "rollback", "--config"])
        .arg(&config)
        .args(["--volume", "vol0", "--yield-to-peer"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("process {} holds", std::process::id())),
        "{err}"
    );
    d.stop();
}
