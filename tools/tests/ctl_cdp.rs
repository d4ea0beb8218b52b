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
