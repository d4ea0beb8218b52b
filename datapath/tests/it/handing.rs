//! A switchover's hand-over whose new role has not reached the disk, end to end through the
//! replication link (`layer/mirror/link.rs`) of an in-process site and a fake peer speaking the
//! wire format (docs/mirror-protocol.md, "Leadership and planned switchover", step 3).
//!
//! Model: one site as an in-process daemon with a state directory, whose persister is held
//! (`Persister::hold`: a state write that hangs without an error) after it handed its
//! leadership over and before "follower of T + 1" is on disk; the link is then cut. The fake
//! peer plays the other site: a follower dialling the listening site, or a leader listening
//! for the dialling one. Invariants checked: while that role is not on disk the link starts no
//! session, neither answering a HELLO with WELCOME (it refuses it) nor sending one (a dialled
//! connection is closed without a byte); once it is on disk, the next HELLO starts a session
//! on the new role; no SWITCH goes before it either.

use crate::harness::{PATIENCE, free_port, rpc_at, wait_until};
use crate::mirror::{
    KEY, fake_in_sync, fake_state, follower_view, hello_with, msg, read_msg, site_body_with,
};
use serde_json::{Value, json};
use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use twinblk::layer::mirror::engine::leadership_word;
use twinblk::layer::mirror::persist::Persister;
use twinblk::layer::mirror::wire::{self, AuthRole, Handshake, Header, Type};
use twinblk_witness::Key;

/// Releases a held persister when dropped (also when the test fails).
struct Unhold(Arc<Persister>);

impl Drop for Unhold {
    fn drop(&mut self) {
        self.0.hold(false);
    }
}

/// Site `me` (peer `peer`) of vol0 as an in-process daemon listening for the link on
/// `listen`, dialling `peer_port`, with a state directory; its control socket. The link is
/// pinged once a second and declared dead after 30 s, so a fake peer that answers no PING
/// keeps it.
fn site(
    root: &Path,
    me: &str,
    peer: &str,
    listen: u16,
    peer_port: u16,
) -> (twinblk::Daemon, PathBuf) {
    let d = root.join(me);
    let state = root.join(format!("state-{me}"));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    let sock = d.join("ctl.sock");
    let mirror = format!(
        "state_dir='{}'\npeer_dead_ms=30000\nheartbeat_ms=1000\n",
        state.display()
    );
    let text = format!(
        "[nbd]\nlisten=['127.0.0.1:0']\n[nvmf]\nlisten=[]\n[control]\nsocket='{}'\n{}",
        sock.display(),
        site_body_with(root, me, peer, listen, peer_port, 30_000, &mirror)
    );
    let cfg = twinblk::control::config::Config::from_toml(&text).expect("test config");
    (twinblk::Daemon::start(&cfg).expect("daemon starts"), sock)
}

/// vol0's `mirror_status` at the site with control socket `sock`.
fn status(sock: &Path) -> Value {
    rpc_at(sock, "mirror_status", Value::Null)["result"][0].clone()
}

/// Wait until vol0's status at `sock` has the session up with this site at `role` of `term`,
/// no switchover step under way.
fn wait_session(sock: &Path, role: &str, term: u64) {
    wait_until(
        PATIENCE,
        || {
            let s = status(sock);
            s["state"] == "up"
                && s["role"] == role
                && s["leader_term"] == term
                && s["switchover"].is_null()
        },
        || {
            format!(
                "no session with this site {role} of term {term}: {}",
                status(sock)
            )
        },
    );
}

/// Every message type the site sends on `s` from now on, until the link closes.
fn record(s: &TcpStream) -> (Arc<Mutex<Vec<Type>>>, std::thread::JoinHandle<()>) {
    let mut r = s.try_clone().unwrap();
    r.set_read_timeout(None).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let into = Arc::clone(&seen);
    let t = std::thread::spawn(move || {
        while let Some((h, _)) = read_msg(&mut r) {
            into.lock().unwrap().push(h.ty);
        }
    });
    (seen, t)
}

/// Ask the site at `sock` to hand vol0 to `to`, with a wait its held state write outlasts:
/// the call must answer "not completed" and say why (before, it answered that `to` leads,
/// while no SWITCH had gone and a crash would have restarted this site as the leader); the
/// site must then be handing: the follower, its new role not on disk.
fn hand_over_held(sock: &Path, to: &str) {
    let r = rpc_at(
        sock,
        "mirror_switchover",
        json!({"volume": "vol0", "to": to, "wait_s": 0.5}),
    );
    assert_eq!(r["error"]["code"], -32011, "{r}");
    let why = r["error"]["message"].as_str().unwrap_or_default();
    assert!(why.contains("not on disk"), "{r}");
    let s = status(sock);
    assert_eq!(s["switchover"], "handing", "{s}");
    assert_eq!(s["role"], "follower", "{s}");
}

/// Play the follower for one HELLO to the site listening on `port`: on WELCOME, complete the
/// handshake (AUTH) and return the stream; on REFUSE, its reason (and the site must close
/// the link, sending nothing more).
fn dial(port: u16) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let nonce = wire::nonce().unwrap();
    s.write_all(&hello_with(&nonce)).unwrap();
    let (h, p) = read_msg(&mut s).expect("an answer to HELLO");
    match h.ty {
        Type::Welcome => {
            let key = Key::new(KEY).unwrap();
            let (hs, proof) = follower_view(nonce, &h, &p);
            assert!(hs.verify(&key, AuthRole::Leader, &proof), "WELCOME's proof");
            s.write_all(&msg(
                Header::new(Type::Auth),
                &hs.proof(&key, AuthRole::Follower),
            ))
            .unwrap();
            fake_in_sync();
            Ok(s)
        }
        Type::Refuse => {
            assert!(read_msg(&mut s).is_none(), "a message after REFUSE");
            Err(String::from_utf8_lossy(&p).into_owned())
        }
        other => panic!("{other:?} answered HELLO"),
    }
}

/// Play the leader (leadership word `lead`) for the HELLO `h` received on `s`: WELCOME, then
/// check the site's AUTH.
fn welcome(s: &mut TcpStream, h: &Header, nonce_f: [u8; wire::NONCE], lead: u64) {
    let key = Key::new(KEY).unwrap();
    let hs = Handshake {
        nonce_f,
        nonce_l: wire::nonce().unwrap(),
        size: crate::mirror::SIZE,
        block: 512,
        f_state: h.id,
        f_inc: h.seq,
        l_state: fake_state(),
        l_inc: 5,
        f_lead: h.offset,
        l_lead: lead,
        name: "vol0",
    };
    s.write_all(&msg(
        Header {
            id: fake_state(),
            seq: 5,
            offset: lead,
            ..Header::new(Type::Welcome)
        },
        &wire::encode_welcome(&wire::Welcome {
            size: crate::mirror::SIZE,
            block: 512,
            nonce: hs.nonce_l,
            proof: hs.proof(&key, AuthRole::Leader),
        }),
    ))
    .unwrap();
    let (a, p) = read_msg(s).expect("AUTH");
    assert_eq!(a.ty, Type::Auth);
    assert!(hs.verify(&key, AuthRole::Follower, &p), "AUTH's proof");
    fake_in_sync();
}

/// Accept the site's next dial on `l` within `within`; the stream.
fn accept_within(l: &TcpListener, within: Duration) -> Option<TcpStream> {
    l.set_nonblocking(true).unwrap();
    let t = Instant::now();
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                return Some(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if t.elapsed() >= within {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// The site (control socket `sock`, persister `p`) leading the session on the fake peer's
/// end `s` hands vol0 over to `to` with its state write held, and the link is cut during the
/// hand-over; nothing it sent on `s` was a SWITCH.
fn cut_during_a_held_hand_over(p: &Persister, sock: &Path, to: &str, s: &TcpStream) {
    let (seen, reader) = record(s);
    p.hold(true);
    hand_over_held(sock, to);
    s.shutdown(Shutdown::Both).unwrap();
    reader.join().unwrap();
    let sent = seen.lock().unwrap().clone();
    assert!(
        !sent.contains(&Type::Switch),
        "SWITCH sent before the new role is on disk: {sent:?}"
    );
}

/// The listening site a (the configured leader) hands vol0 over to a fake follower and its
/// state write hangs; the link is cut. A follower's HELLO is then refused (no WELCOME, the
/// link closed) for as long as "follower of term 1" is not on disk, and starts the session
/// once it is. (Fails with the link's check, `Engine::leadership_durable`, removed: the
/// HELLO is answered with WELCOME at once.)
#[test]
fn a_listening_site_answers_no_hello_before_its_handed_over_role_is_on_disk() {
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    let (d, sock) = site(root.path(), "a", "b", port, free_port());
    let p = d
        .mirror_persister()
        .expect("a state directory has a persister");
    let _unhold = Unhold(Arc::clone(&p));
    let s = dial(port).expect("the first session");
    wait_session(&sock, "leader", 0);
    cut_during_a_held_hand_over(&p, &sock, "b", &s);
    wait_until(
        PATIENCE,
        || status(&sock)["link_up"] == false,
        || format!("the link is still up: {}", status(&sock)),
    );
    // Refused every time while the state write hangs (the peer dials again and again).
    for i in 0..3 {
        let why = dial(port).err().unwrap_or_else(|| {
            panic!("HELLO {i} answered with WELCOME before the new role is on disk")
        });
        assert!(why.contains("not on disk"), "{why}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = status(&sock);
    assert_eq!(st["link_up"], false, "{st}");
    // On disk: the next HELLO starts the session, this site the follower of term 1.
    p.hold(false);
    let t = Instant::now();
    let s = loop {
        match dial(port) {
            Ok(s) => break s,
            Err(why) => {
                assert!(why.contains("not on disk"), "{why}");
                assert!(
                    t.elapsed() < PATIENCE,
                    "still refused once the state is on disk: {why}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    wait_session(&sock, "follower", 1);
    drop(s);
}

/// The dialling site b (the configured follower), made the leader of term 1 by the agreement
/// with a fake leader that follows at term 1, hands vol0 over and its state write hangs; the
/// link is cut. b keeps dialling, and closes every connection without a byte (no HELLO) for as
/// long as "follower of term 2" is not on disk; once it is, its HELLO carries that role and the
/// session starts. (Fails with the link's check removed: b's first dial sends HELLO.)
#[test]
fn a_dialling_site_sends_no_hello_before_its_handed_over_role_is_on_disk() {
    let root = tempfile::tempdir().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let fake = l.local_addr().unwrap().port();
    let (d, sock) = site(root.path(), "b", "a", free_port(), fake);
    let p = d
        .mirror_persister()
        .expect("a state directory has a persister");
    let _unhold = Unhold(Arc::clone(&p));
    // b's dial: its HELLO, answered as the follower of term 1 (so b leads term 1).
    let mut s = accept_within(&l, PATIENCE).expect("b dials");
    let (h, nonce) = hello_nonce(&mut s).expect("b's HELLO");
    welcome(&mut s, &h, nonce, leadership_word(1, false));
    wait_session(&sock, "leader", 1);
    cut_during_a_held_hand_over(&p, &sock, "a", &s);
    // b dials again every 200 ms: each connection is closed without a HELLO.
    let mut closed = 0;
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(1500) {
        if let Some(mut s) = accept_within(&l, Duration::from_millis(100)) {
            if let Some((h, _)) = hello_nonce(&mut s) {
                panic!("HELLO sent before the new role is on disk: {h:?}");
            }
            closed += 1;
        }
    }
    assert!(closed >= 2, "b dialled {closed} time(s) in 1.5 s");
    assert_eq!(status(&sock)["link_up"], false);
    // On disk: the next dial sends HELLO as the follower of term 2, and the session starts.
    p.hold(false);
    let t = Instant::now();
    let (mut s, h, nonce) = loop {
        let mut s = accept_within(&l, PATIENCE).expect("b dials once its role is on disk");
        if let Some((h, nonce)) = hello_nonce(&mut s) {
            break (s, h, nonce);
        }
        assert!(t.elapsed() < PATIENCE, "no HELLO once the state is on disk");
    };
    assert_eq!(h.offset, leadership_word(2, false), "{h:?}");
    welcome(&mut s, &h, nonce, leadership_word(2, true));
    wait_session(&sock, "follower", 2);
}

/// A dialled link's HELLO and its nonce (none: closed without a byte).
fn hello_nonce(s: &mut TcpStream) -> Option<(Header, [u8; wire::NONCE])> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (h, p) = read_msg(s)?;
    assert_eq!(h.ty, Type::Hello, "{h:?}");
    let hello = wire::decode_hello(&p).expect("HELLO payload");
    assert_eq!(hello.name, "vol0");
    Some((h, hello.nonce))
}
