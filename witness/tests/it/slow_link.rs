//! A slow WAN link: an in-test UDP proxy delays every datagram by 300 ms each way.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use twinblk_witness::{Claim, Epoch, GrantOutcome, GroupId};

use crate::harness::*;

const DELAY: Duration = Duration::from_millis(300);

/// Forwards client → witness and back, every datagram `DELAY` late (one thread per datagram).
struct Proxy {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Proxy {
    fn new(witness: SocketAddr) -> Self {
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
                        std::thread::sleep(DELAY);
                        let _ = b.send(&data);
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
                            std::thread::sleep(DELAY);
                            let _ = f.send_to(&data, to);
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
