//! `reactor_set_wait` on a real `twinblk serve`: a reactor's wait policy changes while it runs
//! (visible in `reactor_stats`, and in how the reactor behaves), bad requests are refused
//! with a clear error and change nothing, and I/O keeps being served across the changes.

use crate::harness::{PATIENCE, Server, pattern, wait_until};
use crate::rawnbd::Client;
use serde_json::{Value, json};
use std::time::Duration;

/// (wait, spin_us, turns, sleep_ns) per reactor.
fn waits(srv: &Server) -> Vec<(Value, Value, u64, u64)> {
    srv.rpc("reactor_stats")
        .as_array()
        .expect("reactor_stats is an array")
        .iter()
        .map(|r| {
            (
                r["wait"].clone(),
                r["spin_us"].clone(),
                r["turns"].as_u64().unwrap(),
                r["sleep_ns"].as_u64().expect("sleep_ns published"),
            )
        })
        .collect()
}

fn refused(srv: &Server, params: Value, needle: &str) {
    let r = srv.rpc_with("reactor_set_wait", params.clone());
    assert!(r.get("result").is_none(), "{params} was accepted: {r}");
    assert_eq!(r["error"]["code"], -32602, "{params}: {r}");
    let msg = r["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(needle),
        "{params}: error {msg:?} lacks {needle:?}"
    );
}

#[test]
fn reactor_set_wait_changes_a_running_reactors_policy_and_refuses_bad_values() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(
        dir.path(),
        "[reactor]\ncores=[0,1]\nwait='interrupt'\nspin_us=30\npin=false\n\
         [[volume]]\nname='vol0'\nbackend='malloc'\nsize='16MiB'\n",
    );
    let w = waits(&srv);
    assert_eq!(w.len(), 2);
    for (wait, spin, _, _) in &w {
        assert_eq!(wait, "interrupt");
        assert!(spin.is_null(), "spin_us is for adaptive only: {spin}");
    }

    // Reactor 1 only, to poll: applied before the call returns.
    let r = srv.rpc_with("reactor_set_wait", json!({"wait": "poll", "reactor": 1}));
    let res = &r["result"]["reactors"];
    assert_eq!(res.as_array().map(Vec::len), Some(1), "{r}");
    assert_eq!(res[0]["id"], 1);
    assert_eq!(res[0]["previous_wait"], "interrupt");
    assert_eq!(res[0]["wait"], "poll");
    assert_eq!(res[0]["applied"], true, "{r}");
    let before = waits(&srv);
    assert_eq!(before[0].0, "interrupt", "reactor 0 untouched");
    assert_eq!(before[1].0, "poll");
    // And the reactor behaves so: polling, it turns without sleeping; reactor 0, idle under
    // `interrupt`, sleeps in its ring. (Counts, not timings: a polling reactor turns
    // thousands of times in any slice of CPU it gets.)
    // The polling reactor's thousand turns are waited for (on a loaded machine it may get no
    // CPU for a while); the idle one's few turns are counted over a fixed 300 ms (the window
    // is the point: it must not turn).
    std::thread::sleep(Duration::from_millis(300));
    let after = waits(&srv);
    assert!(
        after[0].2 < before[0].2 + 100,
        "an idle interrupt reactor sleeps: {} -> {} turns",
        before[0].2,
        after[0].2
    );
    wait_until(
        PATIENCE,
        || waits(&srv)[1].2 > before[1].2 + 1000,
        || {
            format!(
                "a polling reactor turns: {} -> {}",
                before[1].2,
                waits(&srv)[1].2
            )
        },
    );
    let after = waits(&srv);
    assert_eq!(after[1].3, before[1].3, "a polling reactor never sleeps");

    // Bad requests: refused, nothing changed.
    refused(&srv, json!({"wait": "busy"}), "poll, adaptive, interrupt");
    refused(&srv, json!({"wait": "poll", "reactor": 2}), "no reactor 2");
    refused(
        &srv,
        json!({"wait": "poll", "reactor": -1}),
        "non-negative integer",
    );
    refused(
        &srv,
        json!({"wait": "interrupt", "spin_us": 5}),
        "adaptive policy only",
    );
    refused(
        &srv,
        json!({"wait": "adaptive", "spin_us": 2_000_000}),
        "too long",
    );
    refused(&srv, json!({"wait": 3}), "must be a string");
    refused(&srv, json!({"spin_us": 3}), "missing \"wait\"");
    refused(
        &srv,
        json!({"wait": "poll", "core": 0}),
        "unknown parameter",
    );
    refused(&srv, Value::Null, "params");
    let w: Vec<_> = waits(&srv).into_iter().map(|x| x.0).collect();
    assert_eq!(
        w,
        vec![json!("interrupt"), json!("poll")],
        "a refusal changed nothing"
    );

    // All reactors to adaptive: the configured spin by default, or the one given.
    let r = srv.rpc_with("reactor_set_wait", json!({"wait": "adaptive"}));
    let res = r["result"]["reactors"].as_array().expect("answer").clone();
    assert_eq!(res.len(), 2);
    assert!(
        res.iter()
            .all(|x| x["applied"] == true && x["spin_us"] == 30),
        "{r}"
    );
    let r = srv.rpc_with(
        "reactor_set_wait",
        json!({"wait": "adaptive", "spin_us": 7}),
    );
    assert!(r.get("error").is_none(), "{r}");
    for (wait, spin, _, _) in waits(&srv) {
        assert_eq!((wait, spin), (json!("adaptive"), json!(7)));
    }

    // I/O is served across changes (two connections: one on each reactor), and again after
    // a change to interrupt while they are open.
    let mut cs: Vec<Client> = (0..2)
        .map(|_| Client::connect(srv.addr, "vol0", true))
        .collect();
    for (n, c) in cs.iter_mut().enumerate() {
        assert_eq!(c.write(n as u64 * 4096, &pattern(n as u64 + 1, 4096)), 0);
    }
    let r = srv.rpc_with("reactor_set_wait", json!({"wait": "interrupt"}));
    assert!(r.get("error").is_none(), "{r}");
    for (n, c) in cs.iter_mut().enumerate() {
        assert!(c.read(n as u64 * 4096, 4096).unwrap() == pattern(n as u64 + 1, 4096));
    }
    for c in cs {
        c.disconnect();
    }
    for (wait, _, _, _) in waits(&srv) {
        assert_eq!(wait, "interrupt");
    }
    // daemon_info still names the configured policy.
    assert_eq!(srv.rpc("daemon_info")["wait"], "interrupt");
}
