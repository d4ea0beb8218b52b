//! UDP links (e.g. a site's path to the witness): datagrams are delayed, rate-limited, lost
//! and cut, as a network would.
//!
//! Model: the link's socket receives datagrams from any client; each client address gets its
//! own upstream socket connected to the target (a session, dropped after [`IDLE`] without
//! traffic), so answers find their way back. Every datagram is scheduled like a TCP chunk
//! (`tx_done = max(now, link_free) + len / rate`, then `+ delay ± jitter`) by one scheduler
//! thread per direction, which sends it at that time. Unlike TCP, loss and cuts **drop**
//! datagrams (UDP has no retransmission to model), and jitter may reorder them.
//!
//! Invariants: a datagram is sent at most once, never before its time; a cut drops everything
//! that would be sent while it lasts (also datagrams already scheduled); the proxy never
//! blocks on a slow receiver (UDP sends do not block).

use super::{DirStats, Link, Rng, schedule};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A client session without traffic for this long is dropped.
pub const IDLE: Duration = Duration::from_secs(60);
/// How often blocked threads look at the stop flag.
const TICK: Duration = Duration::from_millis(50);

type Send = Arc<dyn Fn(&[u8]) + std::marker::Send + Sync>;

/// Client address -> (its upstream socket, its last traffic).
type Sessions = Arc<Mutex<HashMap<SocketAddr, (Arc<UdpSocket>, Instant)>>>;

struct Item {
    at: Instant,
    seq: u64,
    data: Vec<u8>,
    send: Send,
}

impl PartialEq for Item {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Item {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// One direction's scheduler: datagrams ordered by send time.
struct Sched {
    fwd: bool,
    inner: Mutex<SchedInner>,
    cv: Condvar,
}

struct SchedInner {
    heap: BinaryHeap<Reverse<Item>>,
    seq: u64,
    link_free: Instant,
    last: Instant,
    rng: Rng,
}

impl Sched {
    fn new(fwd: bool) -> Sched {
        let now = Instant::now();
        Sched {
            fwd,
            inner: Mutex::new(SchedInner {
                heap: BinaryHeap::new(),
                seq: 0,
                link_free: now,
                last: now,
                rng: Rng::new(),
            }),
            cv: Condvar::new(),
        }
    }

    /// Schedule (or drop) one datagram read now.
    fn push(&self, link: &Link, data: Vec<u8>, send: Send) {
        let st = &link.stats[usize::from(!self.fwd)];
        let s = link.shape(self.fwd);
        let Ok(mut g) = self.inner.lock() else { return };
        if s.cut || (s.loss > 0.0 && g.rng.unit() < s.loss) {
            st.lost_chunks.fetch_add(1, Relaxed);
            return;
        }
        let g = &mut *g;
        // UDP may reorder: each datagram keeps its own time (`last` is not carried over).
        g.last = Instant::now();
        let (at, _) = schedule(
            &super::Shape { loss: 0.0, ..s },
            data.len(),
            Instant::now(),
            &mut g.link_free,
            &mut g.last,
            &mut g.rng,
        );
        g.seq += 1;
        st.held.fetch_add(data.len() as u64, Relaxed);
        g.heap.push(Reverse(Item {
            at,
            seq: g.seq,
            data,
            send,
        }));
        self.cv.notify_all();
    }

    /// Send datagrams when due until `stop`.
    fn run(&self, link: &Link, stop: &AtomicBool) {
        let st: &DirStats = &link.stats[usize::from(!self.fwd)];
        while !stop.load(SeqCst) {
            let item = {
                let Ok(mut g) = self.inner.lock() else { return };
                let due = g.heap.peek().map(|Reverse(i)| i.at);
                match due {
                    Some(at) if at <= Instant::now() => g.heap.pop().map(|Reverse(i)| i),
                    Some(at) => {
                        let wait = at.saturating_duration_since(Instant::now()).min(TICK);
                        // Within 300 µs: yield instead of sleeping (sleep overshoots).
                        if wait > Duration::from_micros(300) {
                            let _ = self.cv.wait_timeout(g, wait - Duration::from_micros(300));
                        } else {
                            drop(g);
                            std::thread::yield_now();
                        }
                        None
                    }
                    None => {
                        let _ = self.cv.wait_timeout(g, TICK);
                        None
                    }
                }
            };
            let Some(item) = item else { continue };
            st.held.fetch_sub(item.data.len() as u64, Relaxed);
            if link.shape(self.fwd).cut {
                st.lost_chunks.fetch_add(1, Relaxed);
                continue;
            }
            (item.send)(&item.data);
            st.delivered.fetch_add(item.data.len() as u64, Relaxed);
        }
    }
}

/// Serve UDP link `link` on `sock` until `stop`.
pub(super) fn serve(sock: UdpSocket, link: Arc<Link>, stop: Arc<AtomicBool>) {
    let sock = Arc::new(sock);
    let _ = sock.set_read_timeout(Some(TICK));
    let scheds = [Arc::new(Sched::new(true)), Arc::new(Sched::new(false))];
    let mut threads = Vec::new();
    for s in &scheds {
        let (s, l, st) = (Arc::clone(s), Arc::clone(&link), Arc::clone(&stop));
        threads.push(std::thread::spawn(move || s.run(&l, &st)));
    }
    let sessions: Sessions = Arc::default();
    let mut buf = vec![0u8; 65536];
    while !stop.load(SeqCst) {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let up = {
            let Ok(mut m) = sessions.lock() else { return };
            m.retain(|_, (_, t)| t.elapsed() < IDLE);
            match m.get_mut(&from) {
                Some((u, t)) => {
                    *t = Instant::now();
                    Arc::clone(u)
                }
                None => {
                    let bind: SocketAddr = if link.spec.target.is_ipv4() {
                        "0.0.0.0:0".parse().expect("address")
                    } else {
                        "[::]:0".parse().expect("address")
                    };
                    let Ok(u) = UdpSocket::bind(bind) else {
                        continue;
                    };
                    if u.connect(link.spec.target).is_err() {
                        continue;
                    }
                    let _ = u.set_read_timeout(Some(TICK));
                    let u = Arc::new(u);
                    m.insert(from, (Arc::clone(&u), Instant::now()));
                    link.accepted.fetch_add(1, Relaxed);
                    // Answers from the target go back to this client.
                    let (u2, back, l, st, rev, sess) = (
                        Arc::clone(&u),
                        Arc::clone(&sock),
                        Arc::clone(&link),
                        Arc::clone(&stop),
                        Arc::clone(&scheds[1]),
                        Arc::clone(&sessions),
                    );
                    std::thread::spawn(move || {
                        l.open.fetch_add(1, Relaxed);
                        let mut b = vec![0u8; 65536];
                        while !st.load(SeqCst) {
                            let alive = sess
                                .lock()
                                .map(|m| m.get(&from).is_some_and(|(s, _)| Arc::ptr_eq(s, &u2)))
                                .unwrap_or(false);
                            if !alive {
                                break;
                            }
                            if let Ok(n) = u2.recv(&mut b) {
                                let back = Arc::clone(&back);
                                let send: Send = Arc::new(move |d: &[u8]| {
                                    let _ = back.send_to(d, from);
                                });
                                rev.push(&l, b[..n].to_vec(), send);
                            }
                        }
                        l.open.fetch_sub(1, Relaxed);
                    });
                    u
                }
            }
        };
        let send: Send = Arc::new(move |d: &[u8]| {
            let _ = up.send(d);
        });
        scheds[0].push(&link, buf[..n].to_vec(), send);
    }
    for s in &scheds {
        s.cv.notify_all();
    }
    for t in threads {
        let _ = t.join();
    }
}
