//! `twinlink`: a userspace TCP proxy that makes a loopback link behave like a link between
//! two sites: propagation delay, jitter, a bandwidth limit, "loss", and cuts (both ways or one
//! way) that leave the connections open (a gray failure), all changed at run time.
//!
//! Model (the operator's contract is docs/twinlink.md; UDP links are in [`udp`]'s doc):
//! - A [`Proxy`] serves several [`LinkSpec`]s (name, listen address, target address). Each
//!   accepted connection is connected to the target and gets two **pipes**: `fwd` (from the
//!   client that connected to the listen address towards the target) and `rev` (back).
//! - A pipe is a reader thread and a writer thread joined by a bounded queue of chunks. The
//!   reader stamps every chunk it reads with its delivery time: the link's transmission model
//!   `tx_done = max(now, link_free) + len / rate` (the bandwidth limit: a chunk is on the wire
//!   after the previous one, `link_free = tx_done`), then `deliver = tx_done + delay + jitter
//!   (+ loss_delay when the chunk is "lost")`, and never earlier than the previous chunk's
//!   delivery time (TCP is a byte stream: jitter never reorders bytes). The writer sleeps
//!   until that time and writes the chunk to the other socket.
//! - Loss: TCP does not lose bytes, it retransmits them. A chunk counts as lost with
//!   probability `1 - (1 - loss)^segments` (segments of 1448 bytes) and is then delivered
//!   `loss_delay` later (default 200 ms, Linux's minimum retransmission timeout); everything
//!   behind it waits too (head-of-line blocking, as with a real retransmission).
//! - Cut: while a direction is cut its writer delivers nothing; the reader keeps reading into
//!   the queue until the queue holds `max_queue` bytes, then stops reading (the sender's
//!   socket buffers fill, its writes block). Sockets stay open: nothing is reset or closed.
//!   On restore the held bytes are delivered at once (in order). A connection accepted while
//!   the `fwd` direction is cut is connected to the target only after it is restored (a SYN
//!   would not pass either); the client's own connect succeeds at once (the proxy accepts).
//! - Settings are per link and direction ([`Shape`]); a change applies to chunks read after
//!   it (a chunk already stamped keeps its delivery time), except cut/restore, which applies
//!   to everything not yet written.
//!
//! Invariants: bytes are delivered in order and exactly once per direction; end of stream is
//! forwarded (as a write shutdown) only after every byte before it; a write error on one side
//! closes the whole connection (both sockets), as a real proxy would.
//!
//! Timing: the writer sleeps until 300 µs before the delivery time and then yields in a loop,
//! so a delay is met to a few tens of µs on an idle machine; the proxy itself adds the cost of
//! two socket hops (measure it with delay 0 and subtract).

pub mod control;
pub mod udp;

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// TCP payload per segment (Ethernet MTU minus headers with timestamps) for the loss model.
const SEGMENT: usize = 1448;
/// Default extra delay of a "lost" chunk (Linux's minimum RTO).
pub const DEFAULT_LOSS_DELAY_MS: f64 = 200.0;
/// Default bytes a direction may hold (queued, not yet delivered) before its reader stops.
pub const DEFAULT_MAX_QUEUE: usize = 16 << 20;

/// The behaviour of one direction of a link.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Shape {
    /// One-way propagation delay, ms.
    pub delay_ms: f64,
    /// Jitter, ms: each chunk gets an extra delay uniform in `[-jitter, +jitter]` (the total
    /// delay is clamped at 0; order is kept).
    pub jitter_ms: f64,
    /// Bandwidth limit in bytes per second; 0: unlimited.
    pub rate_bytes_per_s: u64,
    /// Probability that a TCP segment is lost (0 ..= 1); a lost chunk is delivered
    /// `loss_delay_ms` late.
    pub loss: f64,
    /// Extra delay of a lost chunk, ms.
    pub loss_delay_ms: f64,
    /// Nothing is delivered in this direction (bytes are held; sockets stay open).
    pub cut: bool,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            delay_ms: 0.0,
            jitter_ms: 0.0,
            rate_bytes_per_s: 0,
            loss: 0.0,
            loss_delay_ms: DEFAULT_LOSS_DELAY_MS,
            cut: false,
        }
    }
}

impl Shape {
    /// Refuse values that make no sense (negative or non-finite delays, loss outside 0..=1).
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("delay_ms", self.delay_ms),
            ("jitter_ms", self.jitter_ms),
            ("loss_delay_ms", self.loss_delay_ms),
        ] {
            if !v.is_finite() || !(0.0..=3_600_000.0).contains(&v) {
                return Err(format!("{name} must be between 0 and 3600000, not {v}"));
            }
        }
        if !self.loss.is_finite() || !(0.0..=1.0).contains(&self.loss) {
            return Err(format!("loss must be between 0 and 1, not {}", self.loss));
        }
        Ok(())
    }
}

/// A change to a [`Shape`]: the fields given are set, the others kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapePatch {
    /// See [`Shape::delay_ms`].
    pub delay_ms: Option<f64>,
    /// See [`Shape::jitter_ms`].
    pub jitter_ms: Option<f64>,
    /// See [`Shape::rate_bytes_per_s`].
    pub rate_bytes_per_s: Option<u64>,
    /// See [`Shape::loss`].
    pub loss: Option<f64>,
    /// See [`Shape::loss_delay_ms`].
    pub loss_delay_ms: Option<f64>,
    /// See [`Shape::cut`].
    pub cut: Option<bool>,
}

impl ShapePatch {
    /// `s` with this patch applied.
    pub fn apply(&self, s: Shape) -> Shape {
        Shape {
            delay_ms: self.delay_ms.unwrap_or(s.delay_ms),
            jitter_ms: self.jitter_ms.unwrap_or(s.jitter_ms),
            rate_bytes_per_s: self.rate_bytes_per_s.unwrap_or(s.rate_bytes_per_s),
            loss: self.loss.unwrap_or(s.loss),
            loss_delay_ms: self.loss_delay_ms.unwrap_or(s.loss_delay_ms),
            cut: self.cut.unwrap_or(s.cut),
        }
    }
}

/// Which direction(s) of a link a change is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Dir {
    /// Both directions.
    #[default]
    Both,
    /// From the client (that connected to the listen address) to the target.
    Fwd,
    /// From the target back to the client.
    Rev,
}

impl Dir {
    fn covers(self, fwd: bool) -> bool {
        match self {
            Dir::Both => true,
            Dir::Fwd => fwd,
            Dir::Rev => !fwd,
        }
    }
}

impl std::str::FromStr for Dir {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "both" => Ok(Dir::Both),
            "fwd" => Ok(Dir::Fwd),
            "rev" => Ok(Dir::Rev),
            _ => Err(format!("direction must be both, fwd or rev, not {s:?}")),
        }
    }
}

/// One link to serve: connections to `listen` are forwarded to `target`.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkSpec {
    /// The link's name (used by the control socket).
    pub name: String,
    /// Where the proxy listens (port 0: any free port, see [`Proxy::addr`]).
    pub listen: SocketAddr,
    /// Where it connects.
    pub target: SocketAddr,
    /// A UDP link (datagrams; loss and cuts drop them) instead of TCP.
    pub udp: bool,
}

impl std::str::FromStr for LinkSpec {
    type Err = String;
    /// `NAME,LISTEN,TARGET`, e.g. `a2b,127.0.0.1:7001,127.0.0.1:7000`.
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(',').collect();
        let [name, listen, target] = parts[..] else {
            return Err(format!("a link is NAME,LISTEN,TARGET, not {s:?}"));
        };
        if name.is_empty() {
            return Err("a link needs a name".into());
        }
        Ok(LinkSpec {
            name: name.to_string(),
            listen: listen
                .parse()
                .map_err(|e| format!("listen address {listen:?}: {e}"))?,
            target: target
                .parse()
                .map_err(|e| format!("target address {target:?}: {e}"))?,
            udp: false,
        })
    }
}

/// Per-direction counters of a link.
#[derive(Default, Debug)]
struct DirStats {
    /// Bytes delivered.
    delivered: AtomicU64,
    /// Bytes read and not yet delivered (summed over the link's connections).
    held: AtomicU64,
    /// Chunks delayed by the loss model.
    lost_chunks: AtomicU64,
}

/// A served link's shared state.
struct Link {
    spec: LinkSpec,
    listen: SocketAddr,
    /// `[fwd, rev]`.
    shape: Mutex<[Shape; 2]>,
    /// Woken on every settings change (writers waiting out a cut, connectors).
    changed: Condvar,
    stats: [DirStats; 2],
    open: AtomicU64,
    accepted: AtomicU64,
    max_queue: usize,
}

impl Link {
    fn shape(&self, fwd: bool) -> Shape {
        self.shape
            .lock()
            .map(|s| s[usize::from(!fwd)])
            .unwrap_or_default()
    }
}

/// A link's state as reported by [`Proxy::status`] and the control socket.
#[derive(Serialize, Debug, Clone)]
pub struct LinkStatus {
    /// Name.
    pub name: String,
    /// The address the proxy listens on.
    pub listen: String,
    /// The target.
    pub target: String,
    /// `tcp` or `udp`.
    pub proto: &'static str,
    /// Settings, client to target.
    pub fwd: Shape,
    /// Settings, target to client.
    pub rev: Shape,
    /// Connections open now.
    pub open_connections: u64,
    /// Connections accepted since the start.
    pub accepted_connections: u64,
    /// Bytes delivered client to target.
    pub fwd_delivered_bytes: u64,
    /// Bytes delivered target to client.
    pub rev_delivered_bytes: u64,
    /// Bytes read from the client and not yet delivered (held by a cut, or in flight).
    pub fwd_held_bytes: u64,
    /// Bytes read from the target and not yet delivered.
    pub rev_held_bytes: u64,
    /// Chunks delayed by the loss model, client to target.
    pub fwd_lost_chunks: u64,
    /// Chunks delayed by the loss model, target to client.
    pub rev_lost_chunks: u64,
}

/// A running proxy.
pub struct Proxy {
    links: Vec<Arc<Link>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// Listen on every link's address with its initial shape (`[fwd, rev]`); connections
    /// are served until [`Proxy::stop`]. `max_queue`: bytes a direction of one connection
    /// may hold before its reader stops reading.
    pub fn start(links: &[(LinkSpec, [Shape; 2])], max_queue: usize) -> std::io::Result<Proxy> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut out = Vec::new();
        let mut threads = Vec::new();
        for (i, (spec, shape)) in links.iter().enumerate() {
            if links[..i].iter().any(|(s, _)| s.name == spec.name) {
                return Err(std::io::Error::other(format!(
                    "two links are named {:?}",
                    spec.name
                )));
            }
            for s in shape {
                s.validate().map_err(std::io::Error::other)?;
            }
            let ctx = |e: std::io::Error| {
                std::io::Error::new(
                    e.kind(),
                    format!("link {}: {}: {e}", spec.name, spec.listen),
                )
            };
            let (listener, udp) = if spec.udp {
                (
                    None,
                    Some(std::net::UdpSocket::bind(spec.listen).map_err(ctx)?),
                )
            } else {
                (Some(TcpListener::bind(spec.listen).map_err(ctx)?), None)
            };
            let listen = match (&listener, &udp) {
                (Some(l), _) => l.local_addr()?,
                (_, Some(u)) => u.local_addr()?,
                _ => unreachable!("one of them is bound"),
            };
            let link = Arc::new(Link {
                spec: spec.clone(),
                listen,
                shape: Mutex::new(*shape),
                changed: Condvar::new(),
                stats: Default::default(),
                open: AtomicU64::new(0),
                accepted: AtomicU64::new(0),
                max_queue: max_queue.max(64 * 1024),
            });
            let (l2, s2) = (Arc::clone(&link), Arc::clone(&stop));
            let b = std::thread::Builder::new().name(format!("twinlink-{}", spec.name));
            threads.push(match (listener, udp) {
                (Some(l), _) => b.spawn(move || accept_loop(l, l2, s2))?,
                (_, Some(u)) => b.spawn(move || udp::serve(u, l2, s2))?,
                _ => unreachable!("one of them is bound"),
            });
            out.push(link);
        }
        Ok(Proxy {
            links: out,
            stop,
            threads,
        })
    }

    /// The address link `name` listens on.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.link(name).map(|l| l.listen)
    }

    fn link(&self, name: &str) -> Option<&Arc<Link>> {
        self.links.iter().find(|l| l.spec.name == name)
    }

    /// Change link `name` (every link when `None`) in direction(s) `dir`.
    pub fn set(&self, name: Option<&str>, dir: Dir, patch: &ShapePatch) -> Result<(), String> {
        let targets: Vec<&Arc<Link>> = match name {
            Some(n) => vec![self.link(n).ok_or_else(|| format!("no link named {n:?}"))?],
            None => self.links.iter().collect(),
        };
        // Validate every change before applying any.
        for l in &targets {
            for fwd in [true, false] {
                if dir.covers(fwd) {
                    patch.apply(l.shape(fwd)).validate()?;
                }
            }
        }
        for l in targets {
            if let Ok(mut s) = l.shape.lock() {
                for (i, fwd) in [true, false].into_iter().enumerate() {
                    if dir.covers(fwd) {
                        s[i] = patch.apply(s[i]);
                    }
                }
            }
            l.changed.notify_all();
        }
        Ok(())
    }

    /// Every link's settings and counters.
    pub fn status(&self) -> Vec<LinkStatus> {
        self.links
            .iter()
            .map(|l| {
                let [f, r] = &l.stats;
                LinkStatus {
                    name: l.spec.name.clone(),
                    listen: l.listen.to_string(),
                    target: l.spec.target.to_string(),
                    proto: if l.spec.udp { "udp" } else { "tcp" },
                    fwd: l.shape(true),
                    rev: l.shape(false),
                    open_connections: l.open.load(Relaxed),
                    accepted_connections: l.accepted.load(Relaxed),
                    fwd_delivered_bytes: f.delivered.load(Relaxed),
                    rev_delivered_bytes: r.delivered.load(Relaxed),
                    fwd_held_bytes: f.held.load(Relaxed),
                    rev_held_bytes: r.held.load(Relaxed),
                    fwd_lost_chunks: f.lost_chunks.load(Relaxed),
                    rev_lost_chunks: r.lost_chunks.load(Relaxed),
                }
            })
            .collect()
    }

    /// Stop accepting (open connections are left to finish on their own).
    pub fn stop(mut self) {
        self.stop_accepting();
    }

    fn stop_accepting(&mut self) {
        self.stop.store(true, SeqCst);
        for l in &self.links {
            if !l.spec.udp {
                let _ = TcpStream::connect_timeout(&l.listen, Duration::from_millis(200));
            }
            l.changed.notify_all();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop_accepting();
    }
}

fn accept_loop(listener: TcpListener, link: Arc<Link>, stop: Arc<AtomicBool>) {
    for conn in listener.incoming() {
        if stop.load(SeqCst) {
            break;
        }
        let Ok(client) = conn else {
            // EMFILE and the like: do not spin.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        link.accepted.fetch_add(1, Relaxed);
        let (link, stop) = (Arc::clone(&link), Arc::clone(&stop));
        let _ = std::thread::Builder::new()
            .name("twinlink-conn".into())
            .spawn(move || connection(client, link, stop));
    }
}

/// Serve one accepted connection: wait out a cut of `fwd`, connect to the target, pump.
fn connection(client: TcpStream, link: Arc<Link>, stop: Arc<AtomicBool>) {
    // A SYN would not pass a cut link: connect only once `fwd` is restored.
    if let Ok(mut g) = link.shape.lock() {
        while g[0].cut && !stop.load(SeqCst) {
            g = match link.changed.wait_timeout(g, Duration::from_millis(100)) {
                Ok((g, _)) => g,
                Err(_) => return,
            };
        }
    }
    let target = match TcpStream::connect(link.spec.target) {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "twinlink {}: cannot connect to {}: {e}",
                link.spec.name, link.spec.target
            );
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = target.set_nodelay(true);
    link.open.fetch_add(1, Relaxed);
    let pumps = [(true, &client, &target), (false, &target, &client)].map(|(fwd, src, dst)| {
        let q = Arc::new(Queue::default());
        let (src, dst, dst2, src2) = (
            src.try_clone(),
            dst.try_clone(),
            dst.try_clone(),
            src.try_clone(),
        );
        let (l1, l2, q1, q2) = (
            Arc::clone(&link),
            Arc::clone(&link),
            Arc::clone(&q),
            Arc::clone(&q),
        );
        let r = std::thread::spawn(move || {
            if let Ok(src) = src {
                reader(src, &l1, fwd, &q1);
            }
        });
        let w = std::thread::spawn(move || {
            if let (Ok(dst), Ok(src)) = (dst, src2) {
                writer(dst, src, &l2, fwd, &q2);
            }
            drop(dst2);
        });
        (r, w)
    });
    for (r, w) in pumps {
        let _ = r.join();
        let _ = w.join();
    }
    link.open.fetch_sub(1, Relaxed);
}

struct Chunk {
    data: Vec<u8>,
    at: Instant,
}

#[derive(Default)]
struct QueueInner {
    chunks: VecDeque<Chunk>,
    bytes: usize,
    /// The source reached its end (or failed): no chunk follows.
    eof: bool,
    /// The connection is torn down: the reader stops.
    closed: bool,
}

#[derive(Default)]
struct Queue {
    inner: Mutex<QueueInner>,
    cv: Condvar,
}

/// A small xorshift generator (jitter and loss need no cryptographic randomness).
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        static N: AtomicU64 = AtomicU64::new(0);
        Rng((t ^ N.fetch_add(0x9e37_79b9_7f4a_7c15, Relaxed)) | 1)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn ms(v: f64) -> Duration {
    Duration::from_secs_f64(v.max(0.0) / 1000.0)
}

/// When a chunk of `len` bytes read at `now` is delivered, given the link's shape and the
/// pipe's running state (`link_free`: when the previous chunk left the wire; `last`: the
/// previous chunk's delivery time). Returns the time and whether the chunk was "lost".
fn schedule(
    s: &Shape,
    len: usize,
    now: Instant,
    link_free: &mut Instant,
    last: &mut Instant,
    rng: &mut Rng,
) -> (Instant, bool) {
    let tx_done = if s.rate_bytes_per_s > 0 {
        (*link_free).max(now) + Duration::from_secs_f64(len as f64 / s.rate_bytes_per_s as f64)
    } else {
        now
    };
    *link_free = tx_done;
    let jitter = if s.jitter_ms > 0.0 {
        (rng.unit() * 2.0 - 1.0) * s.jitter_ms
    } else {
        0.0
    };
    let mut at = tx_done + ms(s.delay_ms + jitter);
    let lost = s.loss > 0.0 && {
        let segs = len.div_ceil(SEGMENT) as i32;
        rng.unit() < 1.0 - (1.0 - s.loss).powi(segs)
    };
    if lost {
        at += ms(s.loss_delay_ms);
    }
    let at = at.max(*last);
    *last = at;
    (at, lost)
}

fn reader(mut src: TcpStream, link: &Link, fwd: bool, q: &Queue) {
    let stats = &link.stats[usize::from(!fwd)];
    let mut rng = Rng::new();
    let start = Instant::now();
    let (mut link_free, mut last) = (start, start);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Read at most ~5 ms of the bandwidth limit at once, so a slow link stays smooth.
        let s = link.shape(fwd);
        let cap = if s.rate_bytes_per_s > 0 {
            ((s.rate_bytes_per_s / 200) as usize).clamp(SEGMENT, buf.len())
        } else {
            buf.len()
        };
        let n = match src.read(&mut buf[..cap]) {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        let Ok(mut g) = q.inner.lock() else { return };
        if n == 0 {
            g.eof = true;
            q.cv.notify_all();
            return;
        }
        if g.closed {
            return;
        }
        let s = link.shape(fwd);
        let (at, lost) = schedule(&s, n, Instant::now(), &mut link_free, &mut last, &mut rng);
        if lost {
            stats.lost_chunks.fetch_add(1, Relaxed);
        }
        g.chunks.push_back(Chunk {
            data: buf[..n].to_vec(),
            at,
        });
        g.bytes += n;
        stats.held.fetch_add(n as u64, Relaxed);
        q.cv.notify_all();
        // Hold at most max_queue bytes: then stop reading (the sender's socket fills up).
        while g.bytes >= link.max_queue && !g.closed {
            g = match q.cv.wait(g) {
                Ok(g) => g,
                Err(_) => return,
            };
        }
        if g.closed {
            return;
        }
    }
}

/// Sleep until `at`: a plain sleep until shortly before, then yield (sleep alone overshoots
/// by 50-100 µs, too much for a 0.5 ms one-way delay).
fn sleep_until(at: Instant) {
    const SPIN: Duration = Duration::from_micros(300);
    let now = Instant::now();
    if at > now + SPIN {
        std::thread::sleep(at - now - SPIN);
    }
    while Instant::now() < at {
        std::thread::yield_now();
    }
}

fn writer(dst: TcpStream, src: TcpStream, link: &Link, fwd: bool, q: &Queue) {
    let stats = &link.stats[usize::from(!fwd)];
    let teardown = |q: &Queue| {
        if let Ok(mut g) = q.inner.lock() {
            g.closed = true;
            stats.held.fetch_sub(g.bytes as u64, Relaxed);
            g.bytes = 0;
            g.chunks.clear();
        }
        q.cv.notify_all();
        let _ = dst.shutdown(Shutdown::Both);
        let _ = src.shutdown(Shutdown::Both);
    };
    loop {
        // The next chunk's delivery time, or end of stream.
        let at = {
            let Ok(mut g) = q.inner.lock() else { return };
            loop {
                if let Some(c) = g.chunks.front() {
                    break Some(c.at);
                }
                if g.eof || g.closed {
                    break None;
                }
                g = match q.cv.wait(g) {
                    Ok(g) => g,
                    Err(_) => return,
                };
            }
        };
        // Wait out a cut (end of stream is held by a cut too).
        if let Ok(mut g) = link.shape.lock() {
            while g[usize::from(!fwd)].cut {
                g = match link.changed.wait_timeout(g, Duration::from_millis(50)) {
                    Ok((g, _)) => g,
                    Err(_) => return,
                };
            }
        }
        let Some(at) = at else {
            let _ = dst.shutdown(Shutdown::Write);
            return;
        };
        sleep_until(at);
        if link.shape(fwd).cut {
            continue; // cut while sleeping: hold it
        }
        let chunk = {
            let Ok(mut g) = q.inner.lock() else { return };
            let Some(c) = g.chunks.pop_front() else {
                continue;
            };
            g.bytes -= c.data.len();
            q.cv.notify_all();
            c
        };
        let res = (&dst).write_all(&chunk.data);
        stats.held.fetch_sub(chunk.data.len() as u64, Relaxed);
        if res.is_err() {
            teardown(q);
            return;
        }
        stats.delivered.fetch_add(chunk.data.len() as u64, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_keeps_order_and_applies_rate_delay_and_loss() {
        let t0 = Instant::now();
        let mut rng = Rng::new();
        let (mut free, mut last) = (t0, t0);
        let s = Shape {
            delay_ms: 10.0,
            rate_bytes_per_s: 1_000_000,
            ..Shape::default()
        };
        // 10,000 bytes at 1 MB/s: on the wire 10 ms, delivered 10 ms after that.
        let (a, _) = schedule(&s, 10_000, t0, &mut free, &mut last, &mut rng);
        assert_eq!(a - t0, Duration::from_millis(20));
        // The next chunk read at once waits for the wire: 10 ms more.
        let (b, _) = schedule(&s, 10_000, t0, &mut free, &mut last, &mut rng);
        assert_eq!(b - t0, Duration::from_millis(30));
        // Jitter never reorders.
        let j = Shape {
            delay_ms: 5.0,
            jitter_ms: 5.0,
            ..Shape::default()
        };
        let (mut free, mut last) = (t0, t0);
        let mut prev = t0;
        for i in 0..1000 {
            let (at, _) = schedule(
                &j,
                100,
                t0 + Duration::from_micros(i * 10),
                &mut free,
                &mut last,
                &mut rng,
            );
            assert!(at >= prev);
            assert!(at <= t0 + Duration::from_micros(i * 10) + Duration::from_millis(10));
            prev = at;
        }
        // Loss 1: every chunk is late by loss_delay.
        let l = Shape {
            loss: 1.0,
            loss_delay_ms: 200.0,
            ..Shape::default()
        };
        let (mut free, mut last) = (t0, t0);
        let (at, lost) = schedule(&l, 1, t0, &mut free, &mut last, &mut rng);
        assert!(lost);
        assert_eq!(at - t0, Duration::from_millis(200));
    }

    #[test]
    fn bad_settings_and_link_specs_are_refused() {
        let bad = [
            ShapePatch {
                delay_ms: Some(-1.0),
                ..Default::default()
            },
            ShapePatch {
                loss: Some(1.5),
                ..Default::default()
            },
            ShapePatch {
                jitter_ms: Some(f64::NAN),
                ..Default::default()
            },
        ];
        for p in bad {
            assert!(p.apply(Shape::default()).validate().is_err(), "{p:?}");
        }
        assert!("a,127.0.0.1:1".parse::<LinkSpec>().is_err());
        assert!(",127.0.0.1:1,127.0.0.1:2".parse::<LinkSpec>().is_err());
        assert!("a,nowhere,127.0.0.1:2".parse::<LinkSpec>().is_err());
        let l: LinkSpec = "a2b,127.0.0.1:0,127.0.0.1:9".parse().unwrap();
        assert_eq!(l.name, "a2b");
        assert_eq!(l.target.port(), 9);
        assert!("sideways".parse::<Dir>().is_err());
    }
}
