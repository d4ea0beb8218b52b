//! A survivor lost for good: site b was lost, a served alone (granted by the witness) and is
//! then lost too, never to return. The witness keeps a's grant, so b's operator takeover is
//! denied; an operator at the witness releases the lost holder (`twinblk-witness
//! --release-lost-holder`, the library call `operator::release_lost_holder`), and b's takeover
//! is then granted: b serves again, without the writes a acknowledged alone (the operator
//! accepted that). a comes back with its state: the witness no longer names it, so it
//! fences and is resynced from b, W2's region included.

use crate::failover::{KEY, WitnessProc};
use crate::harness::{pattern, wait_mirror_state};
use crate::rawnbd::Client;
use crate::slow_local::{kill_and_free_port, pair, read_at};
use std::time::{Duration, Instant};

/// Ask for a takeover at `s` and wait for the witness's answer.
fn takeover(s: &crate::harness::Server) -> String {
    let r = s.rpc_with("mirror_takeover", serde_json::json!({"volume": "vol0"}));
    assert!(r["error"].is_null(), "mirror_takeover: {r}");
    let t = Instant::now();
    loop {
        let st = s.rpc("mirror_status");
        let answer = st[0]["witness"]["last_answer"].as_str().unwrap_or("");
        if !st[0]["takeover_pending"].as_bool().unwrap_or(true) && answer != "none" {
            return answer.to_string();
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no answer: {st}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_survivor_lost_for_good_is_released_at_the_witness_and_the_other_site_taken_over() {
    let mut p = pair(true, "", "");
    let (w1, w2, w3) = (pattern(71, 8192), pattern(72, 8192), pattern(73, 8192));
    let mut c = Client::connect(p.a.addr, "vol0", false);
    assert_eq!(c.write(0, &w1), 0, "W1");
    drop(c);
    // b is lost; a is granted and acknowledges W2 alone; then a is lost for good.
    p.b.kill();
    wait_mirror_state(&p.a, "survivor", Duration::from_secs(10));
    let mut c = Client::connect(p.a.addr, "vol0", false);
    assert_eq!(c.write(1 << 20, &w2), 0, "W2");
    drop(c);
    kill_and_free_port(&mut p.a);
    kill_and_free_port(&mut p.b);
    p.b.respawn_in_place();
    assert_eq!(
        takeover(&p.b),
        "denied",
        "b was granted while the lost survivor a holds the group"
    );
    // The operator, at the witness: stop it, release a's grant, start it again.
    let w = p.w.take().expect("a witness");
    let addr = w.addr;
    drop(w);
    let state = p.root.path().join("witness.state");
    let r = twinblk_witness::operator::release_lost_holder(&state, "vol0").expect("release");
    assert!(r.epoch.0 >= 1, "{r:?}");
    p.w = Some(WitnessProc::start(p.root.path(), KEY, Some(addr)));
    assert_eq!(takeover(&p.b), "granted");
    wait_mirror_state(&p.b, "survivor", Duration::from_secs(10));
    assert!(
        read_at(&p.b, 0, 8192) == w1,
        "W1, acknowledged by both, is lost"
    );
    let mut c = Client::connect(p.b.addr, "vol0", false);
    assert_eq!(c.write(2 << 20, &w3), 0, "W3 at b");
    drop(c);
    // a comes back with its state ("survivor, epoch E"): the witness names b, so a fences
    // and b's replica is copied over what a wrote alone (W2's region included).
    p.a.respawn_in_place();
    wait_mirror_state(&p.a, "up", Duration::from_secs(20));
    wait_mirror_state(&p.b, "up", Duration::from_secs(20));
    for (s, name) in [(&p.a, "a"), (&p.b, "b")] {
        assert!(read_at(s, 0, 8192) == w1, "W1 at {name}");
        assert!(read_at(s, 2 << 20, 8192) == w3, "W3 at {name}");
    }
    assert!(
        read_at(&p.a, 1 << 20, 8192) == read_at(&p.b, 1 << 20, 8192),
        "W2's region differs: a kept the write it acknowledged alone"
    );
    assert!(read_at(&p.a, 1 << 20, 8192) != w2, "a serves W2, given up");
}
