//! The replication link's handshake and authentication (HELLO, WELCOME, AUTH) against a real
//! site: forged, replayed, silent and mis-configured peers are refused and nothing they send
//! is applied; and the site's own device failing a read or a flush fails its replica.
//!
//! Model: one or two `twinblk serve` sites (mirror.rs's helpers) and a fake peer speaking the
//! wire format over TCP. Invariants checked: no session starts and nothing is applied without
//! both proofs; refusals say why in the status.

use crate::harness::{Server, free_port, pattern};
use crate::mirror::{
    FAKE_INC, KEY, SIZE, dropped, fake_hello, fake_in_sync, fake_state, msg, read_msg, site_body,
    start_site, status, wait_up,
};
use crate::rawnbd::Client;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};
use twinblk::frontend::nbd::proto::cmd;
use twinblk::layer::mirror::wire::{self, AuthRole, Handshake, Header, NONCE, Type};
use twinblk_witness::Key;

/// Plays the leader for one dial of a follower: reads its HELLO, answers a WELCOME proved with
/// `key` ([`fake_state`], incarnation 5); returns the stream, the WELCOME's bytes and the handshake.
fn fake_leader_welcome(l: &TcpListener, key: &Key) -> (TcpStream, Vec<u8>, Handshake<'static>) {
    let (mut s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (h, p) = read_msg(&mut s).expect("HELLO");
    assert_eq!(h.ty, Type::Hello);
    let hello = wire::decode_hello(&p).unwrap();
    assert_eq!((hello.size, hello.block, hello.name), (SIZE, 512, "vol0"));
    let hs = Handshake {
        nonce_f: hello.nonce,
        nonce_l: wire::nonce().unwrap(),
        size: SIZE,
        block: 512,
        f_state: h.id,
        f_inc: h.seq,
        l_state: fake_state(),
        l_inc: 5,
        f_lead: h.offset,
        l_lead: 1,
        name: "vol0",
    };
    let welcome = msg(
        Header {
            id: fake_state(),
            seq: 5,
            offset: 1,
            ..Header::new(Type::Welcome)
        },
        &wire::encode_welcome(&wire::Welcome {
            size: SIZE,
            block: 512,
            nonce: hs.nonce_l,
            proof: hs.proof(key, AuthRole::Leader),
        }),
    );
    s.write_all(&welcome).unwrap();
    (s, welcome, hs)
}

/// As [`fake_leader_welcome`], then checks the follower's AUTH (it must prove the key).
pub(crate) fn fake_leader_accept(l: &TcpListener, key: &Key) -> (TcpStream, Vec<u8>) {
    let (mut s, welcome, hs) = fake_leader_welcome(l, key);
    let (h, p) = read_msg(&mut s).expect("AUTH");
    assert_eq!(h.ty, Type::Auth);
    assert!(
        hs.verify(key, AuthRole::Follower, &p),
        "the follower's proof does not verify"
    );
    fake_in_sync();
    (s, welcome)
}

/// The follower answers nothing and drops the link.
fn silently_dropped(s: &mut TcpStream) -> bool {
    match read_msg(s) {
        None => true,
        Some((h, _)) => panic!("expected the follower to drop the link, got {h:?}"),
    }
}

fn fwd_write(fill: u8) -> Vec<u8> {
    msg(
        Header {
            id: 1,
            offset: 0,
            count: 4096,
            ..Header::new(Type::FwdWrite)
        },
        &vec![fill; 4096],
    )
}

#[test]
fn a_forged_hello_without_the_key_is_refused_and_nothing_is_applied() {
    let root = tempfile::tempdir().unwrap();
    let pa = free_port();
    let a = start_site(root.path(), "a", "b", pa, free_port(), 10_000);
    // HELLO, then straight to a forwarded write (no AUTH).
    let (mut s, ..) = fake_hello(pa);
    s.write_all(&fwd_write(0xEE)).unwrap();
    assert!(dropped(&mut s), "a forward before AUTH was not refused");
    // HELLO, AUTH with a made-up proof, then a forwarded write.
    let (mut s, ..) = fake_hello(pa);
    s.write_all(&msg(Header::new(Type::Auth), &[0xAB; 32]))
        .unwrap();
    s.write_all(&fwd_write(0xEE)).unwrap();
    assert!(dropped(&mut s), "a forged AUTH was not refused");
    // A version-1 HELLO (no authentication at all), sealed correctly.
    let mut v1 = msg(
        Header::new(Type::Hello),
        &[&SIZE.to_le_bytes()[..], &512u32.to_le_bytes(), b"vol0"].concat(),
    );
    v1[4] = 1;
    let crc =
        twinblk::checksum::crc32c_append(twinblk::checksum::crc32c(&v1[..36]), &v1[wire::HEADER..]);
    v1[36..40].copy_from_slice(&crc.to_le_bytes());
    let mut s = TcpStream::connect(("127.0.0.1", pa)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&v1).unwrap();
    s.write_all(&fwd_write(0xEE)).unwrap();
    assert!(dropped(&mut s), "a version-1 HELLO was not refused");
    // No session ever started, nothing was applied.
    let st = status(&a);
    assert_eq!(st["session"], 0, "{st}");
    // (A site that never had a session serves no read: its replica is read directly.)
    let img = std::fs::read(root.path().join("a.img")).unwrap();
    assert!(
        img[..4096] == [0u8; 4096],
        "an unauthenticated forward was applied"
    );
}

/// A peer that connects to the replication port and sends nothing, half a header, or a
/// HELLO and then no AUTH is dropped once the handshake deadline (2 s) has passed, instead of
/// holding a connection (and its buffers) open for ever. (Found by the fault soak's forged
/// peer sending fewer than 40 random bytes: the site kept the connection open.)
#[test]
fn a_silent_or_half_sent_handshake_is_dropped_after_its_deadline() {
    let root = tempfile::tempdir().unwrap();
    let pa = free_port();
    let _a = start_site(root.path(), "a", "b", pa, free_port(), 10_000);
    let hello = {
        let (_s, _hs, _, hello) = fake_hello(pa);
        hello
    };
    for (what, bytes) in [
        ("nothing", Vec::new()),
        ("half a header", vec![0x57u8; 17]),
        ("a HELLO and no AUTH", hello),
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", pa)).unwrap();
        s.write_all(&bytes).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        let t = Instant::now();
        let mut buf = [0u8; 4096];
        let closed = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => continue, // WELCOME
                // The read timeout: still open. Any other error is the site's close (a reset,
                // or an abort when the close overtook our unread bytes: seen once in CI).
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break false;
                }
                Err(_) => break true,
            }
        };
        assert!(
            closed,
            "a peer that sent {what} was kept for {:?}",
            t.elapsed()
        );
        assert!(
            t.elapsed() >= Duration::from_millis(1500),
            "a peer that sent {what} was dropped before its deadline ({:?})",
            t.elapsed()
        );
    }
}

/// The two sites must agree on failover: a peer announcing a read lease (a witness and
/// `peer_dead_ms`) different from this site's is refused before WELCOME, and the status says
/// why and what to change (a site whose lease outlasts the survivor's wait would serve stale
/// reads). This site has no witness: it announces 0.
#[test]
fn a_peer_with_other_failover_settings_is_refused_with_the_reason() {
    let root = tempfile::tempdir().unwrap();
    let pa = free_port();
    let a = start_site(root.path(), "a", "b", pa, free_port(), 10_000);
    let mut s = TcpStream::connect(("127.0.0.1", pa)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let hello = msg(
        Header {
            id: fake_state(),
            seq: FAKE_INC,
            count: 200,
            ..Header::new(Type::Hello)
        },
        &wire::encode_hello(SIZE, 512, &[7; NONCE], "vol0"),
    );
    s.write_all(&hello).unwrap();
    let mut types = Vec::new();
    while let Some((h, _)) = read_msg(&mut s) {
        types.push(h.ty);
    }
    assert!(
        !types.contains(&Type::Welcome),
        "a peer with other failover settings was welcomed: {types:?}"
    );
    let st = status(&a);
    let why = st["session_refused"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        why.contains("disagree on failover") && why.contains("200 ms"),
        "status does not say why: {st}"
    );
    assert_eq!(st["session"], 0, "{st}");
    // The same HELLO with the same settings (no witness: 0) is welcomed.
    let (_s, ..) = fake_hello(pa);
}

/// A host read that the local device fails takes the site's replica out of service, as a
/// failed write does (DRBD's on-io-error detach): the read fails, the site reports `failed`
/// naming the read, and serves nothing more (the peer keeps the data). (Host reads used to
/// go straight to the device and fail that read only, the site still serving.)
#[test]
fn a_host_read_failing_at_the_device_fails_the_replica() {
    let root = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let a = start_site(root.path(), "a", "b", pa, pb, 10_000);
    let db = root.path().join("b");
    std::fs::create_dir_all(&db).unwrap();
    let body = site_body(root.path(), "b", "a", pb, pa, 10_000) + "fail_range=[1048576, 4096]\n";
    let b = Server::start(&db, &body);
    wait_up(&a);
    wait_up(&b);
    let mut ca = Client::connect(a.addr, "vol0", false);
    assert_eq!(ca.write(0, &pattern(4, 4096)), 0);
    let mut cb = Client::connect(b.addr, "vol0", false);
    assert!(
        cb.read(0, 4096).unwrap() == pattern(4, 4096),
        "b serves reads"
    );
    // The failing range.
    assert!(cb.read(1048576, 4096).is_err(), "the failed read succeeded");
    let t = Instant::now();
    while status(&b)["state"] != "failed" {
        assert!(
            t.elapsed() < crate::harness::PATIENCE,
            "the read failure did not fail the replica: {}",
            status(&b)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = status(&b);
    assert!(
        st["failure"].as_str().unwrap_or_default().contains("read"),
        "{st}"
    );
    // Nothing more is served at b, not even a read that the device would answer.
    let mut cb = Client::connect(b.addr, "vol0", false);
    assert!(cb.read(0, 4096).is_err(), "a failed replica served a read");
}

/// A flush the follower's device fails (a flush issued at the leader, forwarded) takes the
/// follower's replica out of service, with every region ever written suspect (a failed flush
/// may have lost any write it covered), and the leader's flush is not answered as done.
#[test]
fn a_flush_failing_at_the_followers_device_fails_its_replica() {
    let root = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let a = start_site(root.path(), "a", "b", pa, pb, 2_000);
    let db = root.path().join("b");
    std::fs::create_dir_all(&db).unwrap();
    let b = Server::start(
        &db,
        &(site_body(root.path(), "b", "a", pb, pa, 2_000) + "fail_flush=true\n"),
    );
    wait_up(&a);
    wait_up(&b);
    let mut ca = Client::connect(a.addr, "vol0", false);
    assert_eq!(ca.write(0, &pattern(5, 4096)), 0);
    ca.send_request(cmd::FLUSH, 0, 9, 0, 0, &[]);
    let (_, e, _) = ca.read_reply(0);
    assert_ne!(
        e, 0,
        "a flush that failed at the follower was answered done"
    );
    let t = Instant::now();
    while status(&b)["state"] != "failed" {
        assert!(
            t.elapsed() < crate::harness::PATIENCE,
            "the failed flush did not fail the follower's replica: {}",
            status(&b)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = status(&b);
    assert!(
        st["failure"].as_str().unwrap_or_default().contains("flush"),
        "{st}"
    );
}

#[test]
fn a_replayed_hello_and_auth_are_refused_by_the_leader() {
    let root = tempfile::tempdir().unwrap();
    let pa = free_port();
    let a = start_site(root.path(), "a", "b", pa, free_port(), 10_000);
    let key = Key::new(KEY).unwrap();
    // A genuine handshake, recorded.
    let (mut s, hs, _, hello) = fake_hello(pa);
    let auth = msg(Header::new(Type::Auth), &hs.proof(&key, AuthRole::Follower));
    s.write_all(&auth).unwrap();
    let t = Instant::now();
    while status(&a)["state"] != "up" {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "genuine handshake refused"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(s);
    while status(&a)["state"] == "up" {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "link never went down"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Replayed: the leader's WELCOME carries a new nonce, so the recorded AUTH is refused.
    let mut s = TcpStream::connect(("127.0.0.1", pa)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&hello).unwrap();
    let (h, p) = read_msg(&mut s).expect("WELCOME");
    assert_eq!(h.ty, Type::Welcome);
    assert_ne!(
        wire::decode_welcome(&p).unwrap().nonce,
        hs.nonce_l,
        "nonce reused"
    );
    s.write_all(&auth).unwrap();
    s.write_all(&fwd_write(0xEE)).unwrap();
    assert!(dropped(&mut s), "a replayed handshake was not refused");
    let st = status(&a);
    assert_eq!(st["session"], 1, "the replay started a session: {st}");
    let mut c = Client::connect(a.addr, "vol0", false);
    assert!(
        c.read(0, 4096).unwrap() == vec![0u8; 4096],
        "replayed forward applied"
    );
}

#[test]
fn a_replayed_welcome_is_refused_by_the_follower() {
    let root = tempfile::tempdir().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let lp = l.local_addr().unwrap().port();
    let b = start_site(root.path(), "b", "a", free_port(), lp, 10_000);
    let key = Key::new(KEY).unwrap();
    // A genuine session, its WELCOME recorded.
    let (s, welcome) = fake_leader_accept(&l, &key);
    drop(s);
    // The follower dials again with a fresh nonce: the recorded WELCOME does not match it.
    let (mut s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (h, _) = read_msg(&mut s).expect("HELLO");
    assert_eq!(h.ty, Type::Hello);
    s.write_all(&welcome).unwrap();
    s.write_all(&msg(
        Header {
            seq: 1,
            offset: 0,
            count: 4096,
            ..Header::new(Type::Write)
        },
        &vec![0xEE; 4096],
    ))
    .unwrap();
    assert!(silently_dropped(&mut s), "a replayed WELCOME was accepted");
    let st = status(&b);
    assert!(st["session"].as_u64().unwrap() <= 1, "{st}");
    let mut c = Client::connect(b.addr, "vol0", false);
    assert!(
        c.read(0, 4096).unwrap() == vec![0u8; 4096],
        "a replayed session's write applied"
    );
}

#[test]
fn a_wrong_key_is_refused_at_both_ends() {
    let root = tempfile::tempdir().unwrap();
    let wrong = Key::new(b"not-the-mirror-key-0123456789").unwrap();
    // A follower with the wrong key: the leader's proof does not verify with it, and its AUTH
    // is refused.
    let pa = free_port();
    let a = start_site(root.path(), "a", "b", pa, free_port(), 10_000);
    let (mut s, hs, proof, _) = fake_hello(pa);
    assert!(!hs.verify(&wrong, AuthRole::Leader, &proof));
    s.write_all(&msg(
        Header::new(Type::Auth),
        &hs.proof(&wrong, AuthRole::Follower),
    ))
    .unwrap();
    s.write_all(&fwd_write(0xEE)).unwrap();
    assert!(dropped(&mut s), "the leader took a wrong key");
    assert_eq!(status(&a)["session"], 0);
    // A leader with the wrong key: the follower sends no AUTH and drops the link.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let lp = l.local_addr().unwrap().port();
    let rb = root.path().join("b");
    std::fs::create_dir_all(&rb).unwrap();
    let b = start_site(&rb, "b", "a", free_port(), lp, 10_000);
    let (mut s, _, _) = fake_leader_welcome(&l, &wrong);
    assert!(silently_dropped(&mut s), "the follower took a wrong key");
    assert_eq!(status(&b)["session"], 0);
    drop((a, b));
    // Two real sites with different keys never bring the link up.
    let (pa, pb) = (free_port(), free_port());
    let (ra, rb) = (root.path().join("ra"), root.path().join("rb"));
    std::fs::create_dir_all(&ra).unwrap();
    std::fs::create_dir_all(&rb).unwrap();
    let a = start_site(&ra, "a", "b", pa, pb, 10_000);
    let mut body = site_body(&rb, "b", "a", pb, pa, 10_000);
    let other = rb.join("other.key");
    std::fs::write(&other, b"not-the-mirror-key-0123456789").unwrap();
    body = body.replace(
        &rb.join("link.key").display().to_string(),
        &other.display().to_string(),
    );
    let b = Server::start(&rb, &body);
    std::thread::sleep(Duration::from_millis(1500));
    for s in [&a, &b] {
        let st = status(s);
        assert_eq!(
            st["session"], 0,
            "sites with different keys had a session: {st}"
        );
    }
}
