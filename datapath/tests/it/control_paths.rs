//! Paths and names an operator gives the control socket (docs/control.md): a directory or file
//! another volume uses is refused however it is spelt, and a documented name works wherever it
//! is used.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// An in-process daemon with a control socket in `dir`: a RAM volume `base` (4 MiB), a RAM
/// volume `j` (8 MiB, 4 KiB blocks) journaled in `dir/cdpj` and a file volume `f` (1 MiB) on
/// `dir/f.img`.
fn daemon(dir: &Path) -> (twinblk::Daemon, PathBuf) {
    let sock = dir.join("ctl.sock");
    let text = format!(
        "[reactor]\ncores=[0]\npin=false\nwait='adaptive'\n[nbd]\nlisten=['127.0.0.1:0']\n\
         [control]\nsocket='{}'\n[runtime]\nmax_volumes=8\n\
         [[volume]]\nname='base'\nbackend='malloc'\nsize='4MiB'\n\
         [[volume]]\nname='j'\nbackend='malloc'\nsize='8MiB'\nblock_size=4096\n\
         [volume.cdp]\ndir='{}'\nsegment_size='4MiB'\n\
         [[volume]]\nname='f'\nbackend='uring'\nsize='1MiB'\npath='{}'\ncreate=true\n",
        sock.display(),
        dir.join("cdpj").display(),
        dir.join("f.img").display()
    );
    let cfg = twinblk::control::config::Config::from_toml(&text).expect("test config");
    (twinblk::Daemon::start(&cfg).expect("daemon starts"), sock)
}

use crate::harness::rpc_at as rpc;

fn ok(r: Value) -> Value {
    assert!(r.get("error").is_none(), "refused: {r}");
    r["result"].clone()
}

/// `cdp_enable`'s "a directory another volume's history uses" was checked on the path as
/// written: `D/../D` or a symbolic link to D passed it, and (with the other volume's journal
/// switched off, so the directory's lock was free) the volume journaled into the other
/// volume's history, which then claimed the other's old points as its own.
#[test]
fn cdp_enable_refuses_another_volumes_history_directory_however_it_is_spelt() {
    let tmp = tempfile::tempdir().unwrap();
    let (_d, sock) = daemon(tmp.path());
    let hist = tmp.path().join("cdpj");
    ok(rpc(&sock, "cdp_disable", json!({"volume": "j"})));
    ok(rpc(
        &sock,
        "volume_create",
        json!({"name": "k", "backend": "malloc", "size": "8M", "block_size": 4096}),
    ));
    std::os::unix::fs::symlink(&hist, tmp.path().join("alias")).unwrap();
    std::fs::create_dir(tmp.path().join("sub")).unwrap();
    for dir in [
        hist.join("..").join("cdpj"),
        tmp.path().join("sub/../cdpj"),
        tmp.path().join("alias"),
        tmp.path().join("alias/"),
    ] {
        let p = json!({"volume": "k", "dir": dir, "wait": 30});
        let r = rpc(&sock, "cdp_enable", p.clone());
        let e = r
            .get("error")
            .unwrap_or_else(|| panic!("{p}: accepted: {r}"));
        assert_eq!(e["code"], -32020, "{p}: {r}");
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("holds the history of volume \"j\""),
            "{p}: {r}"
        );
    }
    let st = ok(rpc(&sock, "cdp_status", Value::Null));
    assert_eq!(st.as_array().unwrap().len(), 1, "{st}");
    // A directory of its own is taken.
    ok(rpc(
        &sock,
        "cdp_enable",
        json!({"volume": "k", "dir": tmp.path().join("cdpk"), "wait": 30}),
    ));
}

fn refused(sock: &Path, method: &str, p: Value, code: i64, says: &str) {
    let r = rpc(sock, method, p.clone());
    let e = r
        .get("error")
        .unwrap_or_else(|| panic!("{method} {p}: accepted: {r}"));
    assert_eq!(e["code"], code, "{method} {p}: {r}");
    let m = e["message"].as_str().unwrap();
    assert!(m.contains(says), "{method} {p}: {m}");
}

/// `volume_create` of a file volume took any path: the file of another served volume (two
/// volumes then wrote the same blocks), a file inside a CDP history directory, or a relative
/// path (made in the daemon's working directory, not the operator's).
#[test]
fn volume_create_refuses_a_file_another_volume_uses_a_history_directory_or_a_relative_path() {
    let tmp = tempfile::tempdir().unwrap();
    let (_d, sock) = daemon(tmp.path());
    let t = tmp.path();
    std::fs::create_dir(t.join("sub")).unwrap();
    std::os::unix::fs::symlink(t.join("f.img"), t.join("link.img")).unwrap();
    let uring = |name: &str, path: &Path| json!({"name": name, "backend": "uring", "size": "1M", "path": path, "create": true});
    // The configured volume's file, however it is spelt.
    for path in [t.join("f.img"), t.join("sub/../f.img"), t.join("link.img")] {
        refused(
            &sock,
            "volume_create",
            uring("u", &path),
            -32020,
            "volume \"f\"",
        );
    }
    // A run-time volume's file, until that volume is deleted.
    ok(rpc(&sock, "volume_create", uring("u1", &t.join("u.img"))));
    refused(
        &sock,
        "volume_create",
        uring("u2", &t.join("sub/../u.img")),
        -32020,
        "volume \"u1\"",
    );
    ok(rpc(&sock, "volume_delete", json!({"name": "u1"})));
    ok(rpc(&sock, "volume_create", uring("u2", &t.join("u.img"))));
    // Inside a history directory (a new file there, or one of its segments).
    refused(
        &sock,
        "volume_create",
        uring("u3", &t.join("cdpj/new.img")),
        -32020,
        "history",
    );
    let seg = std::fs::read_dir(t.join("cdpj"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("a file in the history directory");
    let before = std::fs::metadata(&seg).unwrap().len();
    refused(
        &sock,
        "volume_create",
        json!({"name": "u3", "backend": "uring", "size": before.div_ceil(512) * 512 + (1 << 20), "path": seg, "create": true}),
        -32020,
        "history",
    );
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        before,
        "{seg:?} was extended"
    );
    // A relative path.
    refused(
        &sock,
        "volume_create",
        uring("u3", Path::new("rel.img")),
        -32602,
        "absolute",
    );
    let vols = ok(rpc(&sock, "volume_list", Value::Null));
    assert_eq!(vols.as_array().unwrap().len(), 4, "{vols}");
}

/// A view name and a bookmark name may start with '-' (documented: letters, digits, '-', '_',
/// '.'), but they were given to the view's and restore's command line as an argument of their
/// own, where `-x` reads as an option: the view did not start ("For more information, try
/// '--help'.") and the restore failed, for names the daemon had accepted.
#[test]
fn view_and_bookmark_names_starting_with_a_dash_are_names() {
    let tmp = tempfile::tempdir().unwrap();
    let body = format!(
        "[reactor]\ncores=[0]\npin=false\n[[volume]]\nname='j'\nbackend='malloc'\nsize='1MiB'\n\
         [volume.cdp]\ndir='{}'\nsegment_size='4MiB'\n",
        tmp.path().join("cdpj").display()
    );
    let s = crate::harness::Server::start(tmp.path(), &body);
    let mut at = 0;
    for mark in ["-x", "--sandbox"] {
        let r = s.rpc_with("cdp_bookmark", json!({"volume": "j", "name": mark}));
        assert!(r["error"].is_null(), "{r}");
        at = r["result"]["time_ns"].as_u64().unwrap();
    }
    // A write after them: the window reaches past the bookmarks.
    let mut c = crate::rawnbd::Client::connect(s.addr, "j", false);
    assert_eq!(c.write(0, &crate::harness::pattern(7, 4096)), 0);
    crate::harness::wait_until(
        crate::harness::PATIENCE,
        || s.rpc("cdp_status")[0]["window_end_ns"].as_u64() >= Some(at),
        || format!("the window does not reach {at}: {}", s.rpc("cdp_status")),
    );
    let nbd = || format!("127.0.0.1:{}", crate::harness::free_port());
    for p in [
        json!({"volume": "j", "seq": 1, "name": "-x", "nbd": nbd()}),
        json!({"volume": "j", "seq": 1, "name": "--sandbox", "nbd": nbd()}),
        json!({"volume": "j", "bookmark": "-x", "nbd": nbd()}),
        json!({"volume": "j", "bookmark": "--sandbox", "name": "-v", "nbd": nbd()}),
    ] {
        let r = s.rpc_with("cdp_view_open", p.clone());
        assert!(r["error"].is_null(), "{p}: {r}");
        let want = p["name"].as_str().unwrap_or("view");
        assert_eq!(r["result"]["name"], want, "{p}: {r}");
        let id = r["result"]["id"].clone();
        let r = s.rpc_with("cdp_view_close", json!({"id": id}));
        assert_eq!(r["result"]["exit"], 0, "{p}: {r}");
    }
    let out = tmp.path().join("out.img");
    let r = s.rpc_with(
        "cdp_restore",
        json!({"volume": "j", "bookmark": "-x", "out": out}),
    );
    assert!(r["error"].is_null(), "{r}");
    let id = r["result"]["id"].as_u64().unwrap();
    crate::harness::wait_until(
        crate::harness::PATIENCE,
        || {
            s.rpc("cdp_jobs")
                .as_array()
                .unwrap()
                .iter()
                .any(|j| j["id"] == id && j["state"] != "running")
        },
        || format!("restore {id} still running: {}", s.rpc("cdp_jobs")),
    );
    let jobs = s.rpc("cdp_jobs");
    let job = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == id)
        .unwrap()
        .clone();
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 1 << 20);
}

/// A point past what a history can hold (`seq` or `time_ns` above 2^63 - 1, as JSON allows
/// up to 2^64 - 1) failed the view in its own configuration ("the view's configuration ...
/// TOML parse error ... number too large"), not as the point outside the window it is.
#[test]
fn a_view_at_a_point_past_any_history_is_refused_as_outside_the_window() {
    let tmp = tempfile::tempdir().unwrap();
    let body = format!(
        "[reactor]\ncores=[0]\npin=false\n[[volume]]\nname='j'\nbackend='malloc'\nsize='1MiB'\n\
         [volume.cdp]\ndir='{}'\nsegment_size='4MiB'\n",
        tmp.path().join("cdpj").display()
    );
    let s = crate::harness::Server::start(tmp.path(), &body);
    for key in ["seq", "time_ns"] {
        for v in [u64::MAX, 1 << 63] {
            let mut p = json!({"volume": "j", "nbd": "127.0.0.1:0"});
            p[key] = json!(v);
            let r = s.rpc_with("cdp_view_open", p.clone());
            let m = r["error"]["message"]
                .as_str()
                .unwrap_or_else(|| panic!("{p}: {r}"));
            assert!(
                m.contains("outside the restorable window") && !m.contains("TOML"),
                "{p}: {m}"
            );
        }
    }
}

/// `cdp_restore` answers at once and runs as a child, but took what it can check at once
/// without a word: an `out` inside a CDP history directory (the restored image written among
/// the history's segments), an `out` in a directory that does not exist, a bookmark the
/// volume does not have; each was only a failed job in `cdp_jobs`, or a file in a history.
#[test]
fn cdp_restore_refuses_at_once_an_out_in_a_history_or_nowhere_and_a_missing_bookmark() {
    let tmp = tempfile::tempdir().unwrap();
    let (_d, sock) = daemon(tmp.path());
    let t = tmp.path();
    let seq = ok(rpc(&sock, "cdp_status", Value::Null))[0]["durable_seq"].clone();
    for (p, says) in [
        (
            json!({"volume": "j", "seq": seq, "out": t.join("cdpj/out.img")}),
            "history directory",
        ),
        (
            json!({"volume": "j", "seq": seq, "out": t.join("cdpj/../cdpj/seg-9.cdp")}),
            "history directory",
        ),
        (
            json!({"volume": "j", "seq": seq, "out": t.join("nowhere/out.img")}),
            "not a directory",
        ),
        (
            json!({"volume": "j", "bookmark": "nope", "out": t.join("out.img")}),
            "no bookmark named \"nope\"",
        ),
        (
            json!({"volume": "j", "bookmark": "a/b", "out": t.join("out.img")}),
            "no bookmark named \"a/b\"",
        ),
    ] {
        let r = rpc(&sock, "cdp_restore", p.clone());
        if let Some(pid) = r["result"]["pid"].as_u64() {
            // SAFETY: the child this request started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let e = r
            .get("error")
            .unwrap_or_else(|| panic!("{p}: accepted: {r}"));
        assert_eq!(e["code"], -32602, "{p}: {r}");
        assert!(e["message"].as_str().unwrap().contains(says), "{p}: {r}");
    }
    assert_eq!(ok(rpc(&sock, "cdp_jobs", Value::Null)), json!([]));
    assert!(!t.join("cdpj/out.img").exists());
}

/// A listen address with port 0 (any free port) was taken, and the answer named port 0
/// (`nbd://127.0.0.1:0/view`, `"addr": "127.0.0.1:0"`), where nothing listens: the view
/// served on a port nobody was told. The answer now names the ports the view listens on.
#[test]
fn a_view_on_port_zero_answers_the_port_it_serves_on() {
    let tmp = tempfile::tempdir().unwrap();
    let body = format!(
        "[reactor]\ncores=[0]\npin=false\n[[volume]]\nname='j'\nbackend='malloc'\nsize='1MiB'\n\
         [volume.cdp]\ndir='{}'\nsegment_size='4MiB'\n",
        tmp.path().join("cdpj").display()
    );
    let s = crate::harness::Server::start(tmp.path(), &body);
    let r = s.rpc_with(
        "cdp_view_open",
        json!({"volume": "j", "seq": 1, "nbd": "127.0.0.1:0", "nvmf": "127.0.0.1:0", "iscsi": "127.0.0.1:0"}),
    );
    assert!(r["error"].is_null(), "{r}");
    let res = &r["result"];
    let nbd = res["nbd"].as_str().unwrap();
    let addr: std::net::SocketAddr = nbd
        .strip_prefix("nbd://")
        .and_then(|a| a.strip_suffix("/view"))
        .unwrap_or_else(|| panic!("{res}"))
        .parse()
        .unwrap();
    assert_ne!(addr.port(), 0, "{res}");
    let mut c = crate::rawnbd::Client::connect(addr, "view", false);
    assert_eq!(c.read(0, 4096).unwrap(), vec![0u8; 4096]);
    for k in ["nvmf", "iscsi"] {
        let a: std::net::SocketAddr = res[k]["addr"].as_str().unwrap().parse().unwrap();
        assert_ne!(a.port(), 0, "{k}: {res}");
        std::net::TcpStream::connect(a).unwrap_or_else(|e| panic!("{k} {a}: {e}"));
    }
    let r = s.rpc_with("cdp_view_close", json!({"id": res["id"]}));
    assert_eq!(r["result"]["exit"], 0, "{r}");
}

/// `cdp_enable` into a directory that holds files but no history made a new history there,
/// whose files took their names whatever was there: the directory of a file volume whose
/// file is `base.img` had that file replaced by the new history's empty base copy (the
/// volume's data gone at the next start). A directory without a history must be empty now.
#[test]
fn cdp_enable_refuses_a_directory_with_files_but_no_history() {
    let tmp = tempfile::tempdir().unwrap();
    let vdir = tmp.path().join("v");
    std::fs::create_dir(&vdir).unwrap();
    let img = vdir.join("base.img");
    std::fs::write(&img, vec![0xab; 1 << 20]).unwrap();
    let sock = tmp.path().join("ctl.sock");
    let text = format!(
        "[reactor]\ncores=[0]\npin=false\nwait='adaptive'\n[nbd]\nlisten=['127.0.0.1:0']\n\
         [control]\nsocket='{}'\n\
         [[volume]]\nname='f'\nbackend='uring'\nsize='1MiB'\npath='{}'\n",
        sock.display(),
        img.display()
    );
    let cfg = twinblk::control::config::Config::from_toml(&text).expect("test config");
    let _d = twinblk::Daemon::start(&cfg).expect("daemon starts");
    let r = rpc(
        &sock,
        "cdp_enable",
        json!({"volume": "f", "dir": vdir, "wait": 30}),
    );
    let e = r.get("error").unwrap_or_else(|| panic!("accepted: {r}"));
    assert_eq!(e["code"], -32602, "{r}");
    assert!(e["message"].as_str().unwrap().contains("base.img"), "{r}");
    assert_eq!(
        std::fs::read(&img).unwrap(),
        vec![0xab; 1 << 20],
        "base.img changed"
    );
    assert!(!vdir.join("cdp.meta").exists());
    // An empty directory, or a new one, is taken.
    ok(rpc(
        &sock,
        "cdp_enable",
        json!({"volume": "f", "dir": tmp.path().join("new/hist"), "wait": 30}),
    ));
}

/// The config file's `[volume.cdp] dir` was not checked at the start as `cdp_enable` checks
/// its directory: a directory holding files but no history (no `cdp.meta`) got a new
/// history whose files took their names whatever was there (a `base.img` replaced by the
/// empty base copy). The daemon now refuses to start, naming the directory and its files,
/// before it writes anything there; an empty directory and one with a history still start.
#[test]
fn a_configured_cdp_directory_with_files_but_no_history_is_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let vdir = tmp.path().join("v");
    std::fs::create_dir(&vdir).unwrap();
    let img = vdir.join("base.img");
    let content: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&img, &content).unwrap();
    std::fs::write(vdir.join("notes.txt"), b"someone's notes\n").unwrap();
    let config = |dir: &Path| {
        let text = format!(
            "[reactor]\ncores=[0]\npin=false\nwait='adaptive'\n[nbd]\nlisten=['127.0.0.1:0']\n\
             [control]\nsocket='{}'\n\
             [[volume]]\nname='f'\nbackend='uring'\nsize='1MiB'\npath='{}'\ncreate=true\n\
             [volume.cdp]\ndir='{}'\nsegment_size='4MiB'\n",
            tmp.path().join("ctl.sock").display(),
            tmp.path().join("f.img").display(),
            dir.display()
        );
        twinblk::control::config::Config::from_toml(&text).expect("test config")
    };
    let e = match twinblk::Daemon::start(&config(&vdir)) {
        Ok(_) => panic!("a daemon started on a directory holding base.img but no history"),
        Err(e) => format!("{:#}", anyhow::Error::from(e)),
    };
    for want in [
        vdir.display().to_string(),
        "base.img".into(),
        "notes.txt".into(),
        "no CDP history".into(),
    ] {
        assert!(e.contains(&want), "{want:?} not in: {e}");
    }
    assert_eq!(std::fs::read(&img).unwrap(), content, "base.img changed");
    let mut left: Vec<_> = std::fs::read_dir(&vdir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["base.img", "notes.txt"],
        "something was written there"
    );
    // An empty directory starts (a new history), and starts again (its history).
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for _ in 0..2 {
        let mut d = twinblk::Daemon::start(&config(&empty)).expect("an empty directory starts");
        d.stop();
    }
    assert!(empty.join("cdp.meta").exists());
    // A directory that does not exist yet is made.
    let mut d = twinblk::Daemon::start(&config(&tmp.path().join("new/hist"))).expect("new dir");
    d.stop();
}
