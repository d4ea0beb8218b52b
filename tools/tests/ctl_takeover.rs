//! `twinblk-ctl takeover` against a fake control socket that plays the daemon's answers in
//! the order a real site may publish them.

mod common;

use common::{ctl_at, text};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A fake site: `mirror_takeover` is taken; the n-th `mirror_status` (from 1) answers
/// `status(n)`.
fn fake_site(sock: &Path, status: fn(u64) -> Value) {
    let l = UnixListener::bind(sock).unwrap();
    let polls = Arc::new(AtomicU64::new(0));
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let polls = Arc::clone(&polls);
            std::thread::spawn(move || {
                let mut line = String::new();
                if BufReader::new(&s).read_line(&mut line).is_err() {
                    return;
                }
                let req: Value = serde_json::from_str(&line).unwrap();
                let result = match req["method"].as_str().unwrap() {
                    "mirror_takeover" => json!({"volume": "vol0", "asked": true}),
                    "mirror_status" => status(polls.fetch_add(1, Ordering::SeqCst) + 1),
                    m => panic!("unexpected {m}"),
                };
                let _ = writeln!(
                    &s,
                    "{}",
                    json!({"jsonrpc": "2.0", "id": req["id"], "result": result})
                );
            });
        }
    });
}

fn entry(pending: bool, state: &str, answer: &str) -> Value {
    json!([{"volume": "vol0", "state": state, "takeover_pending": pending,
        "witness": {"reachable": true, "epoch": 3, "holder": if answer == "granted" { json!(1) } else { Value::Null },
            "known_epoch": 2, "last_answer": answer}}])
}

/// The engine clears the request (`takeover_pending` false) when the witness's answer comes,
/// and becomes `survivor` a moment later: a poll in between saw "answered, state fenced" and
/// printed "not granted: the witness answered "granted"", exit 6, for a granted takeover.
#[test]
fn a_grant_seen_before_the_state_follows_is_reported_granted() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("a.sock");
    fake_site(&sock, |n| match n {
        1 => entry(true, "fenced", "none"),
        2 => entry(false, "fenced", "granted"),
        _ => entry(false, "survivor", "granted"),
    });
    let o = ctl_at(
        &sock,
        &["takeover", "vol0", "--accept-data-loss", "--wait", "5"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("the witness granted this site the volume"),
        "{}",
        text(&o)
    );
}

/// A denial is reported at once, as before.
#[test]
fn a_denial_is_reported_not_granted() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("a.sock");
    fake_site(&sock, |n| match n {
        1 => entry(true, "fenced", "none"),
        _ => entry(false, "fenced", "denied"),
    });
    let o = ctl_at(
        &sock,
        &["takeover", "vol0", "--accept-data-loss", "--wait", "5"],
    );
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(
        text(&o).contains("not granted: the witness answered \"denied\""),
        "{}",
        text(&o)
    );
}

/// The group granted, but this volume stays fenced (its replica misses a grant): not
/// granted here, said as it is once the wait ends.
#[test]
fn a_group_grant_this_volume_cannot_take_is_said_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("a.sock");
    fake_site(&sock, |n| match n {
        1 => entry(true, "fenced", "none"),
        _ => entry(false, "fenced", "granted"),
    });
    let t = std::time::Instant::now();
    let o = ctl_at(
        &sock,
        &["takeover", "vol0", "--accept-data-loss", "--wait", "1"],
    );
    assert!(t.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(
        text(&o)
            .contains("the witness granted the group (epoch 3), but this volume is fenced here"),
        "{}",
        text(&o)
    );
}
