//! A slow WAN link: an in-test UDP proxy delays every datagram by 300 ms each way; and a link
//! that delivers every datagram twice (the network's duplicates, both ways).

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use twinblk_witness::{Claim, Epoch, GrantOutcome, GroupId};

use crate::harness::*;

const DELAY: Duration = Duration::from_millis(300);

/// Forwards client → witness and back, every datagram `delay` late (one thread per datagram),
/// `copies` times.
struct Proxy {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Proxy {
    fn new(witness: SocketAddr) -> Self {
        Self::with(witness, DELAY, 1)
    }

    fn with(witness: SocketAddr, delay: Duration, copies: usize) -> Self {
        let front = UdpSocket::bind("127.0.0.1:0").expect("bind front");
        let back = UdpSocket::bind("127.0.0.1:0").expect("bind back");
        back.connect(witness).expect("connect");
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
        }
        let addr = front.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let client_addr: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
        let (f1, b1, st1, ca1) = (
            front.try_clone().expect("clone"),
            back.try_clone().expect("clone"),
            Arc::clone(&stop),
            Arc::clone(&client_addr),
        );
        let up = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !st1.load(Ordering::Relaxed) {
                if let Ok((n, from)) = f1.recv_from(&mut buf) {
                    *ca1.lock().expect("lock") = Some(from);
                    let data = buf[..n].to_vec();
                    let b = b1.try_clone().expect("clone");
                    std::thread::spawn(move || {
                        std::thread::sleep(delay);
                        for _ in 0..copies {
                            let _ = b.send(&data);
                        }
                    });
                }
            }
        });
        let st2 = Arc::clone(&stop);
        let down = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !st2.load(Ordering::Relaxed) {
                if let Ok(n) = back.recv(&mut buf) {
                    let to = *client_addr.lock().expect("lock");
                    let data = buf[..n].to_vec();
                    let f = front.try_clone().expect("clone");
                    if let Some(to) = to {
                        std::thread::spawn(move || {
                            std::thread::sleep(delay);
                            for _ in 0..copies {
                                let _ = f.send_to(&data, to);
                            }
                        });
                    }
                }
            }
        });
        Proxy {
            addr,
            stop,
            threads: vec![up, down],
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[test]
fn a_grant_gets_through_a_link_with_300_ms_each_way() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = start(&state_path(&dir), any_port(), 1000);
    let proxy = Proxy::new(w.addr);
    let mut c = client(proxy.addr, 1);
    let claims: Vec<Claim> = (0..100)
        .map(|g| Claim {
            group: GroupId(g),
            preferred: true,
        })
        .collect();
    let t = Instant::now();
    let views = c.heartbeat(&claims).expect("heartbeat over a slow link");
    let rtt = t.elapsed();
    assert_eq!(views.len(), 100);
    assert!(views.iter().all(|v| v.preferred == Some(site(1))));
    assert!(rtt >= 2 * DELAY, "the proxy did delay ({rtt:?})");
    let t = Instant::now();
    let got = c
        .request_grant(GroupId(5), Epoch(0), true)
        .expect("grant over a slow link");
    assert_eq!(got, GrantOutcome::Granted { epoch: Epoch(1) });
    let rtt = t.elapsed();
    assert!(rtt >= 2 * DELAY && rtt < Duration::from_secs(2), "{rtt:?}");
    // Retransmissions (every 150 ms, new counters) reached the witness; all were the same
    // intent, so still one grant at epoch 1.
    drop(proxy);
    let w = w.stop();
    assert_eq!(w.table().groups[&GroupId(5)].epoch, Epoch(1));
    println!("slow link: grant round trip {rtt:?}");
}

/// Every datagram arrives twice, both ways: the witness answers a request's second copy
/// BEHIND (its counter is not above the one it took), and a site reads two answers to one
/// datagram (the second of a finished call ignored, a BEHIND first makes it resend, a new
/// counter). One grant per epoch still, a release taken once, the peer then granted at the
/// next epoch, and no site's call fails or takes another's answer for its own.
#[test]
fn duplicated_datagrams_change_no_outcome() {
    use twinblk_witness::client::ReleaseOutcome;
    let dir = tempfile::tempdir().expect("tempdir");
    let w = start(&state_path(&dir), any_port(), 200);
    let proxy = Proxy::with(w.addr, Duration::from_millis(5), 2);
    let (mut a, mut b) = (client(proxy.addr, 1), client(proxy.addr, 2));
    let g = GroupId(9);
    let claim = |preferred| {
        vec![Claim {
            group: g,
            preferred,
        }]
    };
    for _ in 0..3 {
        let v = a.heartbeat(&claim(true)).expect("heartbeat");
        assert_eq!((v.len(), v[0].holder, v[0].epoch), (1, None, Epoch(0)));
        b.heartbeat(&claim(false)).expect("heartbeat");
    }
    let got = a.request_grant(g, Epoch(0), true).expect("grant");
    assert_eq!(got, GrantOutcome::Granted { epoch: Epoch(1) });
    // Asked again (a retransmission's intent): the same grant, no new epoch.
    let got = a.request_grant(g, Epoch(0), true).expect("grant");
    assert_eq!(got, GrantOutcome::Granted { epoch: Epoch(1) });
    match b.request_grant(g, Epoch(0), false).expect("answer") {
        GrantOutcome::Denied { holder, epoch, .. } => {
            assert_eq!((holder, epoch), (Some(site(1)), Epoch(1)))
        }
        other => panic!("b granted while a holds the group: {other:?}"),
    }
    match a.release(g, Epoch(1)).expect("release") {
        ReleaseOutcome::Released(v) => assert_eq!((v.holder, v.epoch), (None, Epoch(1))),
        other => panic!("release not taken: {other:?}"),
    }
    // (b knows epoch 1 now, say from a heartbeat in sync.)
    let got = b.request_grant(g, Epoch(1), false).expect("grant");
    assert_eq!(got, GrantOutcome::Granted { epoch: Epoch(2) });
    // a's release again (retried after a lost answer): not the holder, nothing changes.
    match a.release(g, Epoch(1)).expect("release") {
        ReleaseOutcome::NotHolder(v) => assert_eq!((v.holder, v.epoch), (Some(site(2)), Epoch(2))),
        other => panic!("a stale release taken: {other:?}"),
    }
    let v = a.heartbeat(&claim(true)).expect("heartbeat");
    assert_eq!((v[0].holder, v[0].epoch), (Some(site(2)), Epoch(2)));
    drop(proxy);
    let w = w.stop();
    let rec = w.table().groups[&g];
    assert_eq!((rec.epoch, rec.holder), (Epoch(2), Some(site(2))));
}
