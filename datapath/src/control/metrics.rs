//! The Prometheus metrics endpoint: `GET /metrics` over plain HTTP on `[control] metrics`.
//!
//! Model: one ordinary thread accepts, never on the I/O path; each client is served by a
//! thread of its own, at most [`MAX_CLIENTS`] at once (a client past that is answered 503 at
//! once and closed), so a client that sends nothing or reads slowly delays no other scrape.
//! At each scrape it reads the same published counters as the control socket (relaxed
//! atomics the reactors and engines publish; nothing a reactor locks) and encodes them with
//! the `prometheus-client` crate's text encoder (Prometheus text format 0.0.4); the HTTP
//! handling is a minimal request-line parser with limits. The metric names and their meaning
//! are documented in docs/control.md ("Metrics").
//!
//! Invariants: bad input never panics the server: a request longer than [`MAX_REQUEST`], a
//! malformed request line or another method or path gets an error status and the connection
//! is closed; a client has [`TIMEOUT`] in all to send its request and take the answer (the
//! time left bounds every read and write), then it is dropped. At most [`MAX_CLIENTS`] client
//! threads exist; at the stop every client's socket is shut down and its thread joined.

use crate::control::ControlCx;
use crate::layer::mirror::failover as fo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest request head accepted (a scrape's is a few hundred bytes).
pub const MAX_REQUEST: usize = 8 * 1024;
/// A client must send its request and take the answer within this.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Clients served at once; one more is answered 503 and closed.
pub const MAX_CLIENTS: usize = 8;
/// The answer to a client past [`MAX_CLIENTS`].
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// Every state a mirrored volume can be in (`mirror_status`'s `state`).
const STATES: [&str; 8] = [
    "up",
    "down",
    "diverged",
    "survivor",
    "fenced",
    "resyncing",
    "waiting",
    "failed",
];

/// Every CDP journal state (`cdp_status`'s `journal`).
const JOURNAL_STATES: [&str; 3] = ["running", "degraded", "off"];

/// Every path state (`mirror_status`'s `path_state`).
const PATH_STATES: [&str; 4] = [
    "optimized",
    "non_optimized",
    "inaccessible",
    "transitioning",
];

/// Reads the site's published state at each scrape.
struct Site {
    cx: Arc<ControlCx>,
    site_id: Option<u32>,
}

impl std::fmt::Debug for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("twinblk site collector")
    }
}

/// A counter family (integer or seconds), one row per label set.
fn counter<N: prometheus_client::encoding::EncodeCounterValue + Copy>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(&[(&str, &str)], N)],
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        let c = ConstCounter::new(*v);
        c.encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(&[(&str, &str)], f64)],
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        let g = ConstGauge::new(*v);
        g.encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for Site {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let rt = &self.cx.rt;
        // Volumes: summed over reactors, as `volume_stats`.
        let per_reactor: Vec<_> = rt.stats.iter().map(|s| s.volumes()).collect();
        let vols: Vec<(String, crate::runtime::VolCounters)> = rt
            .volumes
            .list()
            .into_iter()
            .map(|(i, v)| {
                let total = per_reactor
                    .iter()
                    .filter_map(|r| r.get(i))
                    .fold(crate::runtime::VolCounters::default(), |a, b| a.add(b));
                (v.name.clone(), total)
            })
            .collect();
        let labels: Vec<[(&str, &str); 1]> =
            vols.iter().map(|(n, _)| [("volume", n.as_str())]).collect();
        let rows =
            |f: &dyn Fn(&crate::runtime::VolCounters) -> u64| -> Vec<(&[(&str, &str)], u64)> {
                vols.iter()
                    .zip(&labels)
                    .map(|((_, c), l)| (&l[..], f(c)))
                    .collect()
            };
        counter(
            &mut e,
            "volume_ops",
            "Operations started, per volume.",
            &rows(&|c| c.ops),
        )?;
        counter(
            &mut e,
            "volume_read_bytes",
            "Bytes read, per volume.",
            &rows(&|c| c.read_bytes),
        )?;
        counter(
            &mut e,
            "volume_written_bytes",
            "Bytes written, per volume.",
            &rows(&|c| c.write_bytes),
        )?;
        counter(
            &mut e,
            "volume_errors",
            "Operations that failed, per volume.",
            &rows(&|c| c.errors),
        )?;

        // Reactors.
        let snaps: Vec<_> = rt
            .stats
            .iter()
            .map(|s| (s.snapshot(), s.open_conns.load(Ordering::Relaxed)))
            .collect();
        let ids: Vec<String> = (0..snaps.len()).map(|i| i.to_string()).collect();
        let rl: Vec<[(&str, &str); 1]> = ids.iter().map(|i| [("reactor", i.as_str())]).collect();
        let secs =
            |f: &dyn Fn(&crate::runtime::stats::Counters) -> u64| -> Vec<(&[(&str, &str)], f64)> {
                snaps
                    .iter()
                    .zip(&rl)
                    .map(|((s, _), l)| (&l[..], f(s) as f64 / 1e9))
                    .collect()
            };
        counter(
            &mut e,
            "reactor_busy_seconds",
            "Time each reactor spent on work (busy ratio: rate of this over rate of busy + idle).",
            &secs(&|s| s.busy_ns),
        )?;
        counter(
            &mut e,
            "reactor_idle_seconds",
            "Time each reactor spent idle.",
            &secs(&|s| s.idle_ns),
        )?;
        gauge(
            &mut e,
            "reactor_open_connections",
            "Connections open on each reactor.",
            &snaps
                .iter()
                .zip(&rl)
                .map(|((_, o), l)| (&l[..], *o as f64))
                .collect::<Vec<_>>(),
        )?;

        // Mirrored volumes.
        let ms: Vec<_> = self
            .cx
            .mirrors
            .iter()
            .map(|m| {
                let v = rt.volumes.get_any(m.vol);
                let name = v.as_ref().map_or("?", |v| v.name.as_str());
                (
                    m,
                    m.stats.snapshot(name, m.leader),
                    v.as_ref()
                        .map_or(crate::bdev::volume::PathState::Inaccessible, |v| {
                            v.path.get()
                        }),
                )
            })
            .collect();
        let ml: Vec<[(&str, &str); 1]> = ms
            .iter()
            .map(|(_, s, _)| [("volume", s.volume.as_str())])
            .collect();
        let mrows = |f: &dyn Fn(&crate::layer::mirror::stats::MirrorSnapshot) -> f64| -> Vec<(&[(&str, &str)], f64)> {
            ms.iter().zip(&ml).map(|((_, s, _), l)| (&l[..], f(s))).collect()
        };
        let mcount = |f: &dyn Fn(&crate::layer::mirror::stats::MirrorSnapshot) -> u64| -> Vec<(&[(&str, &str)], u64)> {
            ms.iter().zip(&ml).map(|((_, s, _), l)| (&l[..], f(s))).collect()
        };
        let state_labels: Vec<[(&str, &str); 2]> = ms
            .iter()
            .flat_map(|(_, s, _)| {
                STATES
                    .iter()
                    .map(|st| [("volume", s.volume.as_str()), ("state", *st)])
            })
            .collect();
        let state_rows: Vec<(&[(&str, &str)], f64)> = state_labels
            .iter()
            .map(|l| {
                let now = ms
                    .iter()
                    .find(|(_, s, _)| s.volume == l[0].1)
                    .map(|(_, s, _)| s.state);
                (&l[..], if now == Some(l[1].1) { 1.0 } else { 0.0 })
            })
            .collect();
        gauge(
            &mut e,
            "mirror_state",
            "1 for the mirrored volume's current state at this site, 0 for the others (docs/control.md, mirror_status).",
            &state_rows,
        )?;
        let path_labels: Vec<[(&str, &str); 2]> = ms
            .iter()
            .flat_map(|(_, s, _)| {
                PATH_STATES
                    .iter()
                    .map(|p| [("volume", s.volume.as_str()), ("state", *p)])
            })
            .collect();
        let path_rows: Vec<(&[(&str, &str)], f64)> = path_labels
            .iter()
            .map(|l| {
                let now = ms
                    .iter()
                    .find(|(_, s, _)| s.volume == l[0].1)
                    .map(|(_, _, p)| super::path_state_name(*p));
                (&l[..], if now == Some(l[1].1) { 1.0 } else { 0.0 })
            })
            .collect();
        gauge(
            &mut e,
            "mirror_path_state",
            "1 for this site's current path state of the volume, 0 for the others.",
            &path_rows,
        )?;
        gauge(
            &mut e,
            "mirror_link_up",
            "1 while a session with the peer is up.",
            &mrows(&|s| f64::from(u8::from(s.link_up))),
        )?;
        gauge(
            &mut e,
            "mirror_backlog_bytes",
            "Unacknowledged update bytes kept for the follower (leader).",
            &mrows(&|s| s.backlog_bytes as f64),
        )?;
        gauge(
            &mut e,
            "mirror_dirty_bytes",
            "Bytes written while alone, still to copy to the peer.",
            &mrows(&|s| s.dirty_bytes as f64),
        )?;
        gauge(
            &mut e,
            "mirror_resync_remaining_seconds",
            "The running resync's estimated time left (0: none running).",
            &mrows(&|s| s.resync_eta_s),
        )?;
        gauge(
            &mut e,
            "mirror_resync_rate_bytes_per_second",
            "The running resync's copy rate (0: none running).",
            &mrows(&|s| s.resync_rate_bytes_per_s as f64),
        )?;
        counter(
            &mut e,
            "mirror_resync_bytes",
            "Bytes copied to the peer by resyncs.",
            &mcount(&|s| s.resync_bytes),
        )?;
        gauge(
            &mut e,
            "mirror_resync_unreadable_bytes",
            "Bytes the running resync could not read from this replica (retried).",
            &mrows(&|s| s.resync_unreadable_bytes as f64),
        )?;
        counter(
            &mut e,
            "mirror_local_errors",
            "Local device errors a survivor answered to their requests while it went on serving.",
            &mcount(&|s| s.local_errors),
        )?;
        counter(
            &mut e,
            "mirror_reads_held",
            "Host reads held for want of a read lease, then served or refused.",
            &mcount(&|s| s.reads_held),
        )?;
        counter(
            &mut e,
            "mirror_reads_held_refused",
            "Held host reads refused in the end (the site came to serve nothing, or the peer timeout).",
            &mcount(&|s| s.reads_held_refused),
        )?;
        counter(
            &mut e,
            "mirror_updates",
            "Updates submitted by this site's initiators.",
            &mcount(&|s| s.updates),
        )?;
        counter(
            &mut e,
            "mirror_acks_received",
            "ACK messages received from the peer.",
            &mcount(&|s| s.acks_received),
        )?;
        counter(
            &mut e,
            "mirror_timeouts",
            "Requests failed because the peer did not answer in time.",
            &mcount(&|s| s.timeouts),
        )?;
        counter(
            &mut e,
            "mirror_rejected_messages",
            "Messages refused (the link was dropped for each).",
            &mcount(&|s| s.rejected),
        )?;
        counter(
            &mut e,
            "mirror_sessions",
            "Sessions started with the peer.",
            &mcount(&|s| u64::from(s.session)),
        )?;
        let rtt: Vec<(&[(&str, &str)], f64)> = ms
            .iter()
            .zip(&ml)
            .filter_map(|((_, s, _), l)| s.rtt_p50_us.map(|us| (&l[..], us / 1e6)))
            .collect();
        gauge(
            &mut e,
            "mirror_link_rtt_p50_seconds",
            "Median PING round trip of the link over its last 64 samples (absent before the first).",
            &rtt,
        )?;

        // The witness, per group (as this site last heard it).
        let mut groups: Vec<(&str, &fo::FailoverSlot)> = Vec::new();
        for (m, _, _) in &ms {
            if let Some(slot) = m.failover.as_deref()
                && !groups.iter().any(|(g, _)| *g == m.group)
            {
                groups.push((m.group.as_str(), slot));
            }
        }
        let gl: Vec<[(&str, &str); 1]> = groups.iter().map(|(g, _)| [("group", *g)]).collect();
        let reach: Vec<(&[(&str, &str)], f64)> = groups
            .iter()
            .zip(&gl)
            .filter_map(|((_, s), l)| match s.witness.load(Ordering::SeqCst) {
                fo::WITNESS_REACHABLE => Some((&l[..], 1.0)),
                fo::WITNESS_UNREACHABLE => Some((&l[..], 0.0)),
                _ => None,
            })
            .collect();
        gauge(
            &mut e,
            "witness_reachable",
            "1 when the witness answered this site's last heartbeat, 0 when not (absent before the first).",
            &reach,
        )?;
        let epoch: Vec<(&[(&str, &str)], f64)> = groups
            .iter()
            .zip(&gl)
            .map(|((_, s), l)| (&l[..], s.view_epoch.load(Ordering::SeqCst) as f64))
            .collect();
        gauge(
            &mut e,
            "witness_epoch",
            "The group's epoch at the witness, as this site last heard it.",
            &epoch,
        )?;
        let held: Vec<(&[(&str, &str)], f64)> = groups
            .iter()
            .zip(&gl)
            .map(|((_, s), l)| {
                let h = s.view_holder.load(Ordering::SeqCst);
                (
                    &l[..],
                    f64::from(u8::from(h != 0 && Some(h) == self.site_id)),
                )
            })
            .collect();
        gauge(
            &mut e,
            "witness_grant_held",
            "1 while this site holds the group's survivor grant.",
            &held,
        )?;

        // CDP journals (as `cdp_status`: the same published counters).
        let journals: Vec<(String, serde_json::Value)> = self
            .cx
            .cdp
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|c| (rt.volumes.name(c.vol), c.snapshot()))
            .collect();
        let jl: Vec<[(&str, &str); 2]> = journals
            .iter()
            .flat_map(|(n, _)| {
                JOURNAL_STATES
                    .iter()
                    .map(move |st| [("volume", n.as_str()), ("state", *st)])
            })
            .collect();
        let jrows: Vec<(&[(&str, &str)], f64)> = jl
            .iter()
            .map(|l| {
                let now = journals
                    .iter()
                    .find(|(n, _)| n == l[0].1)
                    .map(|(_, j)| j["journal"] == l[1].1);
                (&l[..], f64::from(u8::from(now == Some(true))))
            })
            .collect();
        gauge(
            &mut e,
            "cdp_journal_state",
            "1 for the CDP journal's current state at this site (running, degraded: stopped after a failed append, the volume serving with its history ended; off: switched off at run time), 0 for the others (docs/control.md, cdp_status).",
            &jrows,
        )?;
        let cl: Vec<[(&str, &str); 1]> = journals
            .iter()
            .map(|(n, _)| [("volume", n.as_str())])
            .collect();
        gauge(
            &mut e,
            "cdp_catching_up",
            "1 while the CDP history is not whole yet (journaling the volume again after cdp_enable, or waiting for the mirror to vouch for the replica).",
            &journals
                .iter()
                .zip(&cl)
                .map(|((_, j), l)| (&l[..], f64::from(u8::from(j["catching_up"] == true))))
                .collect::<Vec<_>>(),
        )?;
        Ok(())
    }
}

/// The exposition text of one scrape.
pub fn render(cx: &Arc<ControlCx>, site_id: Option<u32>) -> String {
    let mut reg = Registry::with_prefix("twinblk");
    reg.register_collector(Box::new(Site {
        cx: Arc::clone(cx),
        site_id,
    }));
    let mut out = String::new();
    if prometheus_client::encoding::prometheus_text::encode(&mut out, &reg).is_err() {
        out.clear();
    }
    out
}

/// A running metrics endpoint.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The clients being served.
#[derive(Default)]
struct Clients {
    next: u64,
    /// Each client's id and a second handle on its socket (shut down at the stop).
    open: Vec<(u64, Option<TcpStream>)>,
    /// The client threads not yet joined (finished ones are joined at the next accept).
    threads: Vec<JoinHandle<()>>,
}

fn lock(c: &Mutex<Clients>) -> MutexGuard<'_, Clients> {
    // A client thread changes the lists in single pushes and removals: still whole.
    c.lock().unwrap_or_else(|p| p.into_inner())
}

impl MetricsServer {
    /// The serving thread, while it runs (for placing it off the reactors' cores).
    pub fn pthread(&self) -> Option<libc::pthread_t> {
        use std::os::unix::thread::JoinHandleExt;
        self.thread.as_ref().map(|t| t.as_pthread_t())
    }

    /// Listen on `addr` (port 0: any; see [`MetricsServer::addr`]).
    pub fn start(
        addr: SocketAddr,
        cx: Arc<ControlCx>,
        site_id: Option<u32>,
    ) -> std::io::Result<Self> {
        let l = TcpListener::bind(addr)
            .map_err(|e| std::io::Error::new(e.kind(), format!("metrics listener {addr}: {e}")))?;
        let addr = l.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                let clients = Arc::new(Mutex::new(Clients::default()));
                for conn in l.incoming() {
                    if stop2.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(c) = conn {
                        admit(c, &clients, &cx, site_id);
                    }
                }
                let (open, threads) = {
                    let mut g = lock(&clients);
                    (std::mem::take(&mut g.open), std::mem::take(&mut g.threads))
                };
                for s in open.into_iter().filter_map(|(_, s)| s) {
                    let _ = s.shutdown(Shutdown::Both);
                }
                for t in threads {
                    let _ = t.join();
                }
            })?;
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop listening, close every client and wait for their threads.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serve `c` on a thread of its own, or answer 503 when [`MAX_CLIENTS`] are being served.
fn admit(c: TcpStream, clients: &Arc<Mutex<Clients>>, cx: &Arc<ControlCx>, site_id: Option<u32>) {
    let mut g = lock(clients);
    let (done, running): (Vec<_>, Vec<_>) = std::mem::take(&mut g.threads)
        .into_iter()
        .partition(|t| t.is_finished());
    g.threads = running;
    for t in done {
        let _ = t.join();
    }
    if g.open.len() >= MAX_CLIENTS {
        drop(g);
        busy(c);
        return;
    }
    let id = g.next;
    g.next += 1;
    g.open.push((id, c.try_clone().ok()));
    let (clients2, cx) = (Arc::clone(clients), Arc::clone(cx));
    let spawned = std::thread::Builder::new()
        .name("metrics-client".into())
        .spawn(move || {
            serve(c, &cx, site_id);
            lock(&clients2).open.retain(|(i, _)| *i != id);
        });
    match spawned {
        Ok(t) => g.threads.push(t),
        // The socket went with the closure: it is closed.
        Err(e) => {
            tracing::warn!(error = %e, "metrics: cannot start a client thread");
            g.open.retain(|(i, _)| *i != id);
        }
    }
}

/// Answer 503 without waiting on the client: what it sent is discarded, the answer fits in
/// an empty socket buffer.
fn busy(mut c: TcpStream) {
    if c.set_nonblocking(true).is_ok() {
        let mut buf = [0u8; 1024];
        for _ in 0..MAX_REQUEST / buf.len() {
            if !matches!(c.read(&mut buf), Ok(n) if n > 0) {
                break;
            }
        }
        let _ = c.write_all(BUSY);
        let _ = c.shutdown(Shutdown::Write);
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// `GET /metrics`.
    Metrics,
    /// Another path.
    NotFound,
    /// Another method.
    BadMethod,
    /// Not an HTTP request line.
    Malformed,
}

/// Parse a request head's first line.
pub fn parse_request(head: &[u8]) -> Request {
    let line = head.split(|b| *b == b'\n').next().unwrap_or(&[]);
    let Ok(line) = std::str::from_utf8(line) else {
        return Request::Malformed;
    };
    let mut w = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (w.next(), w.next(), w.next(), w.next())
    else {
        return Request::Malformed;
    };
    if !version.starts_with("HTTP/1.") || target.is_empty() {
        return Request::Malformed;
    }
    if method != "GET" && method != "HEAD" {
        return Request::BadMethod;
    }
    match target.split('?').next() {
        Some("/metrics") => Request::Metrics,
        _ => Request::NotFound,
    }
}

/// The time left until `deadline`, or a timeout error when it has passed.
fn left(deadline: Instant) -> std::io::Result<Duration> {
    let d = deadline.saturating_duration_since(Instant::now());
    if d.is_zero() {
        return Err(std::io::ErrorKind::TimedOut.into());
    }
    Ok(d)
}

/// Write all of `b` by `deadline` (a client reading slowly gets no more time).
fn write_by(c: &mut TcpStream, mut b: &[u8], deadline: Instant) -> std::io::Result<()> {
    while !b.is_empty() {
        c.set_write_timeout(Some(left(deadline)?))?;
        match c.write(b) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => b = &b[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn serve(mut c: TcpStream, cx: &Arc<ControlCx>, site_id: Option<u32>) {
    let deadline = Instant::now() + TIMEOUT;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let Ok(t) = left(deadline) else { return };
        if c.set_read_timeout(Some(t)).is_err() {
            return;
        }
        match c.read(&mut buf) {
            Ok(0) => return,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > MAX_REQUEST {
            let _ = write_by(&mut c, b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", deadline);
            return;
        }
    }
    let (status, body) = match parse_request(&head) {
        Request::Metrics => ("200 OK", render(cx, site_id)),
        Request::NotFound => ("404 Not Found", "only /metrics is served\n".to_string()),
        Request::BadMethod => ("405 Method Not Allowed", "GET only\n".to_string()),
        Request::Malformed => ("400 Bad Request", "not an HTTP/1 request\n".to_string()),
    };
    let head_only = head.starts_with(b"HEAD ");
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if write_by(&mut c, reply.as_bytes(), deadline).is_ok() && !head_only {
        let _ = write_by(&mut c, body.as_bytes(), deadline);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_parsed_and_bad_ones_refused() {
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Request::Metrics
        );
        assert_eq!(
            parse_request(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Request::Metrics
        );
        assert_eq!(
            parse_request(b"HEAD /metrics HTTP/1.1\r\n\r\n"),
            Request::Metrics
        );
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\n\r\n"), Request::NotFound);
        assert_eq!(
            parse_request(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Request::BadMethod
        );
        for bad in [
            &b""[..],
            b"\r\n\r\n",
            b"GET\r\n\r\n",
            b"GET /metrics\r\n\r\n",
            b"GET /metrics SPDY/3\r\n\r\n",
            b"GET /metrics HTTP/1.1 extra\r\n\r\n",
            b"\xff\xfe /metrics HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(parse_request(bad), Request::Malformed, "{bad:?}");
        }
    }
}
