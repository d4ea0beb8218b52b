//! Forged, replayed and mismatched datagrams are never acted on, in either direction; a stale
//! request is answered BEHIND (nothing done), which lets a site whose clock is behind its last
//! counter continue at once.

use std::net::UdpSocket;
use std::time::Duration;

use twinblk_witness::proto::{self, Body, DenyReason, Msg};
use twinblk_witness::{Epoch, GrantOutcome, GroupId, GroupView, Key};

use crate::harness::*;

fn grant_request(s: u32, counter: u64, group: u64) -> Msg {
    Msg {
        site: site(s),
        counter,
        body: Body::GrantRequest {
            group: GroupId(group),
            known: Epoch(0),
            preferred: false,
            holds: false,
        },
    }
}

fn sealed(m: &Msg, k: &Key) -> Vec<u8> {
    let mut b = Vec::new();
    proto::encode(&mut b, m, k).expect("encode");
    b
}

/// Sends `bytes` and returns the answer, if one comes within 400 ms.
fn ask_raw(sock: &UdpSocket, bytes: &[u8]) -> Option<Msg> {
    sock.send(bytes).expect("send");
    let mut buf = [0u8; 2048];
    match sock.recv(&mut buf) {
        Ok(n) => Some(proto::decode_answer(&buf[..n], &key()).expect("witness answers are valid")),
        Err(_) => None,
    }
}

#[test]
fn the_witness_ignores_forged_and_replayed_requests_even_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = state_path(&dir);
    let w = start(&state, any_port(), 100);
    let addr = w.addr;
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.connect(addr).expect("connect");
    sock.set_read_timeout(Some(Duration::from_millis(400)))
        .expect("timeout");
    let wrong = Key::new(b"integration-test-key-0123456788").expect("key");

    // Wrong key: no answer, no grant.
    assert!(ask_raw(&sock, &sealed(&grant_request(1, 1000, 5), &wrong)).is_none());
    // A valid request with one byte flipped (the group): no answer.
    let mut flipped = sealed(&grant_request(1, 1001, 5), &key());
    flipped[24] ^= 1;
    assert!(ask_raw(&sock, &flipped).is_none());
    // Garbage and a truncated datagram: no answer.
    assert!(ask_raw(&sock, &[0u8; 64]).is_none());
    let good = sealed(&grant_request(1, 1002, 5), &key());
    assert!(ask_raw(&sock, &good[..good.len() - 1]).is_none());
    // The genuine request is granted and its answer echoes its counter.
    let a = ask_raw(&sock, &good).expect("answered");
    assert_eq!(a.counter, 1002);
    assert!(matches!(a.body, Body::Grant { view } if view.epoch == Epoch(1)));
    // Replaying it, or sending an older counter, changes nothing: answered BEHIND, naming the
    // highest counter accepted, with the request's own counter echoed.
    let behind = |a: Option<Msg>, counter: u64, highest: u64| {
        let a = a.expect("a stale request is answered");
        assert_eq!((a.counter, a.body), (counter, Body::Behind { highest }));
    };
    behind(ask_raw(&sock, &good), 1002, 1002);
    behind(
        ask_raw(&sock, &sealed(&grant_request(1, 999, 6), &key())),
        999,
        1002,
    );
    // An attacker replays site 1's recorded RELEASE after the witness restarts: still nothing.
    let release = sealed(
        &Msg {
            site: site(1),
            counter: 1003,
            body: Body::Release {
                group: GroupId(5),
                epoch: Epoch(1),
                unused: false,
            },
        },
        &key(),
    );
    let a = ask_raw(&sock, &release).expect("release answered");
    assert!(matches!(a.body, Body::State { view, .. } if view.holder.is_none()));
    drop(w.stop());
    let w = start(&state, addr, 100);
    behind(ask_raw(&sock, &release), 1003, 1003);
    behind(ask_raw(&sock, &good), 1002, 1003);
    // Site 2, which never sent anything, is unaffected by site 1's counters.
    // (It knows epoch 0 < 1, so it is told STALE.)
    let a = ask_raw(&sock, &sealed(&grant_request(2, 5, 5), &key())).expect("answered");
    assert!(matches!(
        a.body,
        Body::Deny {
            reason: DenyReason::Stale,
            ..
        }
    ));
    let w = w.stop();
    let stats = w.stats();
    assert!(stats.replays >= 2, "{stats:?}");
    let rec = w.table().groups[&GroupId(5)];
    assert_eq!((rec.epoch, rec.holder), (Epoch(1), None));
    assert!(
        !w.table().groups.contains_key(&GroupId(6)),
        "the stale request for group 6 did nothing"
    );
}

/// A witness of its own (state in a new directory) and a socket connected to it that waits
/// 400 ms for an answer.
fn witness_and_socket() -> (tempfile::TempDir, Running, UdpSocket) {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = start(&state_path(&dir), any_port(), 100);
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.connect(w.addr).expect("connect");
    sock.set_read_timeout(Some(Duration::from_millis(400)))
        .expect("timeout");
    (dir, w, sock)
}

/// A site restarted with its clock behind the counters it sent before (it ran ahead until NTP
/// stepped it back) is told where to continue and is answered within one call; before BEHIND
/// it was ignored until its clock caught up (here an hour), unable to fail over meanwhile.
#[test]
fn a_site_whose_clock_is_behind_its_last_counter_is_answered_at_once() {
    let (_dir, w, sock) = witness_and_socket();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let ahead = now + 3_600_000_000_000;
    let a = ask_raw(&sock, &sealed(&grant_request(1, ahead, 7), &key())).expect("answered");
    assert!(matches!(a.body, Body::Grant { .. }), "{a:?}");
    // The site restarts (a new client, counters from its wall clock, an hour behind).
    let mut c = client(w.addr, 1);
    c.set_timeout(Duration::from_secs(2));
    let started = std::time::Instant::now();
    let views = c
        .heartbeat(&[twinblk_witness::Claim {
            group: GroupId(7),
            preferred: false,
        }])
        .expect("answered within the call, not after the clock caught up");
    assert_eq!(views[0].holder, Some(site(1)), "{views:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // Its later calls go on above the counter it was told.
    assert!(matches!(
        c.request_grant(GroupId(7), Epoch(1), false)
            .expect("answered"),
        GrantOutcome::Granted { epoch: Epoch(1) }
    ));
    let w = w.stop();
    assert!(w.table().counters[&site(1)] > ahead);
    drop(w);
    // A counter of 2^64 - 1 cannot be passed: the call says so instead of timing out.
    let (_dir, w, sock) = witness_and_socket();
    let a = ask_raw(&sock, &sealed(&grant_request(2, u64::MAX, 8), &key())).expect("answered");
    assert!(matches!(a.body, Body::Grant { .. }), "{a:?}");
    let mut c2 = client(w.addr, 2);
    let e = c2.heartbeat(&[]).expect_err("no counter above 2^64 - 1");
    assert!(
        matches!(e, twinblk_witness::ClientError::CounterExhausted),
        "{e}"
    );
    drop(w.stop());
}

#[test]
fn the_client_ignores_forged_mismatched_and_reflected_answers() {
    // A fake witness that answers every request first with four bad answers, then a good one.
    let fake = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = fake.local_addr().expect("addr");
    let wrong = Key::new(b"not-the-key-but-long-enough").expect("key");
    let server = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let (n, from) = fake.recv_from(&mut buf).expect("request");
        let req = proto::decode_request(&buf[..n], &key()).expect("valid request");
        let view = |epoch, holder| GroupView {
            group: GroupId(3),
            epoch: Epoch(epoch),
            holder: Some(holder),
            preferred: None,
        };
        let grant = |epoch, counter, s| Msg {
            site: s,
            counter,
            body: Body::Grant {
                view: view(epoch, s),
            },
        };
        let bad = [
            sealed(&grant(91, req.counter, req.site), &wrong), // forged (wrong key)
            sealed(&grant(92, req.counter + 1, req.site), &key()), // counter not sent
            sealed(&grant(93, req.counter, site(9)), &key()),  // another site's answer
            buf[..n].to_vec(),                                 // the request reflected
        ];
        for b in &bad {
            fake.send_to(b, from).expect("send");
        }
        let good = Msg {
            site: req.site,
            counter: req.counter,
            body: Body::Deny {
                reason: DenyReason::Held,
                view: view(4, site(2)),
                wait_ms: 0,
            },
        };
        fake.send_to(&sealed(&good, &key()), from).expect("send");
    });
    let mut c = client(addr, 1);
    let got = c
        .request_grant(GroupId(3), Epoch(0), false)
        .expect("answer");
    server.join().expect("fake witness");
    assert_eq!(
        got,
        GrantOutcome::Denied {
            reason: DenyReason::Held,
            holder: Some(site(2)),
            epoch: Epoch(4),
            preferred: None,
        }
    );
}

#[test]
fn an_unreachable_witness_is_a_timeout_not_a_hang() {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = sock.local_addr().expect("addr");
    drop(sock); // nobody listens there now
    let mut c = client(addr, 1);
    c.set_timeout(Duration::from_millis(400));
    let t = std::time::Instant::now();
    let r = c.request_grant(GroupId(1), Epoch(0), true);
    assert!(
        matches!(r, Err(twinblk_witness::ClientError::Timeout(_))),
        "{r:?}"
    );
    assert!(t.elapsed() < Duration::from_millis(700));
}
