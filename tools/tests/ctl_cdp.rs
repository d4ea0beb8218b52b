//! `twinblk-ctl cdp` against a running site with a journaled volume (the daemon `twinblk serve`
//! runs, started in this process): status, bookmarks set, listed and deleted, refusals.

mod common;

use common::{ctl_at as ctl, text};

#[test]
fn cdp_status_and_bookmarks_through_twinblk_ctl() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ctl.sock");
    let cfg = twinblk::control::config::Config::from_toml(&format!(
        "[reactor]\ncores=[0]\npin=false\n[nbd]\nlisten=[]\n[nvmf]\nlisten=[]\n[control]\nsocket='{}'\n\
         [[volume]]\nname='db'\nbackend='malloc'\nsize='8MiB'\ngroup='oracle'\n\
         [volume.cdp]\ndir='{}'\nsegment_size='4MiB'\nretention_age='2h'\n",
        sock.display(),
        dir.path().join("j").display()
    ))
    .unwrap();
    let mut d = twinblk::Daemon::start(&cfg).expect("daemon starts");
    let s = sock.to_str().unwrap();
    let o = ctl(s, &["cdp", "status"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("db (group oracle): journal running"), "{t}");
    assert!(t.contains("(target 2.0 h)"), "{t}");
    assert!(t.contains("--time "), "{t}");
    // `status` asks for the journals too: a running one is no problem, and is shown.
    let o = ctl(s, &["status"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("CDP at "), "{}", text(&o));
    assert!(text(&o).contains(": journal running"), "{}", text(&o));
    let o = ctl(s, &["--json", "status"]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        j["groups"][0]["volumes"][0]["sites"][0]["cdp"]["journal"], "running",
        "{j}"
    );
    let o = ctl(s, &["--json", "cdp", "status", "db"]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j[0]["volume"], "db");
    let o = ctl(s, &["--json", "cdp", "status", "nope"]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap(),
        serde_json::json!([])
    );
    // A bookmark on the group, listed by volume, then deleted.
    let o = ctl(
        s,
        &["cdp", "bookmark", "before-upgrade", "--group", "oracle"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("bookmark before-upgrade at 20"),
        "{}",
        text(&o)
    );
    let o = ctl(s, &["cdp", "bookmarks", "--volume", "db"]);
    assert!(text(&o).contains("db: before-upgrade  20"), "{}", text(&o));
    let o = ctl(
        s,
        &["cdp", "unbookmark", "before-upgrade", "--volume", "db"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("deleted"), "{}", text(&o));
    let o = ctl(s, &["cdp", "bookmarks", "--volume", "db"]);
    assert!(text(&o).contains("db: no bookmark"), "{}", text(&o));
    // Refusals: the daemon's reason and exit 1; a command line without a target: exit 2.
    for (args, says) in [
        (
            &["cdp", "unbookmark", "before-upgrade", "--volume", "db"][..],
            "no bookmark named",
        ),
        (
            &["cdp", "bookmark", "bad/name", "--volume", "db"][..],
            "bad bookmark name",
        ),
        (&["cdp", "bookmarks", "--volume", "nope"][..], "nope"),
        (
            &[
                "cdp",
                "view",
                "--group",
                "nope",
                "--time",
                "1",
                "--nbd",
                "127.0.0.1:1",
            ][..],
            "no group named \"nope\"",
        ),
        (
            &[
                "cdp",
                "view",
                "--group",
                "oracle",
                "--seq",
                "1",
                "--nbd",
                "127.0.0.1:1",
            ][..],
            "names a point of one volume",
        ),
    ] {
        let o = ctl(s, args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(says), "{args:?}: {}", text(&o));
    }
    assert_eq!(ctl(s, &["cdp", "bookmarks"]).status.code(), Some(2));
    // A view names a volume or a group, not both, not neither; a group's view takes no name.
    for args in [
        &["cdp", "view", "--time", "1"][..],
        &["cdp", "view", "db", "--group", "oracle", "--time", "1"][..],
        &[
            "cdp", "view", "--group", "oracle", "--name", "x", "--time", "1",
        ][..],
    ] {
        assert_eq!(ctl(s, args).status.code(), Some(2), "{args:?}");
    }
    assert_eq!(
        ctl(
            s,
            &[
                "cdp", "bookmark", "x", "--volume", "db", "--group", "oracle"
            ]
        )
        .status
        .code(),
        Some(2)
    );
    // Switched off and on again while the daemon runs (the settings from [volume.cdp]).
    let o = ctl(s, &["cdp", "disable", "db"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("CDP off for db: its history ends at sequence"),
        "{}",
        text(&o)
    );
    let o = ctl(s, &["cdp", "status"]);
    assert!(text(&o).contains("journal off"), "{}", text(&o));
    let o = ctl(s, &["cdp", "disable", "db"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("not on"), "{}", text(&o));
    let o = ctl(s, &["cdp", "enable", "db"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("CDP on for db") && t.contains("group oracle"),
        "{t}"
    );
    assert!(t.contains("points in between are refused"), "{t}");
    assert!(t.contains("until the daemon stops"), "{t}");
    for (args, says) in [
        (&["cdp", "enable", "db"][..], "already on"),
        (
            &["cdp", "enable", "nope", "--dir", "/tmp/x"][..],
            "no volume named",
        ),
        (&["cdp", "disable", "nope"][..], "no volume named"),
    ] {
        let o = ctl(s, args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(says), "{args:?}: {}", text(&o));
    }
    d.stop();
}

/// `cdp enable` waits for the catch-up (minutes on a large volume, its `--wait`): it shows its
/// progress on stderr meanwhile, from `cdp_status`'s `catch_up_bytes`, and its answer as
/// before. A fake daemon answers `cdp_enable` after 2.5 s.
#[test]
fn cdp_enable_shows_the_catch_up_progress_while_it_waits() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ctl.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let polls = Arc::new(AtomicU64::new(0));
    let p2 = Arc::clone(&polls);
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let polls = Arc::clone(&p2);
            std::thread::spawn(move || {
                let mut line = String::new();
                BufReader::new(&s).read_line(&mut line).unwrap();
                let req: serde_json::Value = serde_json::from_str(&line).unwrap();
                let result = match req["method"].as_str().unwrap() {
                    "cdp_enable" => {
                        std::thread::sleep(std::time::Duration::from_millis(2500));
                        serde_json::json!({"volume": "big", "dir": "/j", "group": "big",
                            "home_reactor": 0, "new_history": true, "whole_until_seq": 0,
                            "whole_until_ns": 0, "gap_seq": 9, "whole_from_ns": 5,
                            "journaled_again_bytes": 1u64 << 30, "catching_up": false,
                            "note": "a new history", "lasts": "until the daemon stops"})
                    }
                    "cdp_status" => {
                        let n = polls.fetch_add(1, Ordering::SeqCst) + 1;
                        serde_json::json!([{"volume": "big", "journal": "running",
                            "catching_up": true, "catch_up_bytes": n * (256u64 << 20)}])
                    }
                    "volume_list" => serde_json::json!([{"name": "big", "size": 1u64 << 30,
                        "block_size": 512, "stack": "cdp>malloc"}]),
                    m => panic!("unexpected {m}"),
                };
                let _ = writeln!(
                    &s,
                    "{}",
                    serde_json::json!({"jsonrpc": "2.0", "id": req["id"], "result": result})
                );
            });
        }
    });
    let o = ctl(
        sock.to_str().unwrap(),
        &["cdp", "enable", "big", "--dir", "/j"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cdp enable big: journaling the volume again: 256.0 MiB of 1.0 GiB (25%)"),
        "{err}"
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("sequence 9"),
        "{}",
        text(&o)
    );
}
