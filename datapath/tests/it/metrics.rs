//! The Prometheus metrics endpoint under clients that misbehave (docs/control.md, "Metrics"):
//! a client that connects and sends nothing, or holds its connection open, delays nobody
//! else's scrape; the number of clients served at once is bounded, and a client past the
//! bound is answered 503 at once instead of waiting.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use twinblk::control::metrics::{MAX_CLIENTS, TIMEOUT};

/// An in-process daemon with a metrics endpoint; its address.
fn daemon() -> (twinblk::Daemon, SocketAddr) {
    let text = "[reactor]\ncores=[0]\npin=false\nwait='adaptive'\n[nbd]\nlisten=['127.0.0.1:0']\n[nvmf]\nlisten=['127.0.0.1:0']\n[control]\nsocket=''\nmetrics='127.0.0.1:0'\n[[volume]]\nname='vol0'\nbackend='malloc'\nsize='4MiB'\n";
    let cfg = twinblk::control::config::Config::from_toml(text).expect("test config");
    let d = twinblk::Daemon::start(&cfg).expect("daemon starts");
    let addr = d.metrics_addr().expect("a metrics endpoint");
    (d, addr)
}

/// One scrape: (status line, body, how long it took).
fn scrape(addr: SocketAddr) -> (String, String, Duration) {
    let t0 = Instant::now();
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(TIMEOUT * 3)).unwrap();
    // The server may answer (503) and close before reading the request: ignore a failed write.
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or("").to_string();
    (status, body.to_string(), t0.elapsed())
}

/// A client that connects and sends nothing.
fn idle(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(TIMEOUT * 3)).unwrap();
    s
}

#[test]
fn a_silent_client_does_not_delay_another_scrape() {
    let (d, addr) = daemon();
    let mut silent = idle(addr);
    // Let the server take the silent one first.
    std::thread::sleep(Duration::from_millis(100));
    let (status, body, took) = scrape(addr);
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(body.contains("twinblk_volume_ops_total"), "{body}");
    assert!(
        took < TIMEOUT / 2,
        "the scrape took {took:?} behind a silent client (its timeout is {TIMEOUT:?})"
    );
    // The daemon's stop closes the silent client instead of waiting for its time to run out.
    let t0 = Instant::now();
    drop(d);
    assert!(
        t0.elapsed() < TIMEOUT / 2,
        "the stop took {:?}",
        t0.elapsed()
    );
    let mut b = [0u8; 16];
    assert_eq!(
        silent.read(&mut b).unwrap_or(0),
        0,
        "the silent client got an answer"
    );
}

#[test]
fn clients_past_the_bound_get_503_at_once_and_silent_ones_are_dropped_after_the_timeout() {
    let (_d, addr) = daemon();
    let mut silent: Vec<TcpStream> = (0..MAX_CLIENTS).map(|_| idle(addr)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let (status, _, took) = scrape(addr);
    assert!(
        status.starts_with("HTTP/1.1 503"),
        "client {} of at most {MAX_CLIENTS}: {status:?}",
        MAX_CLIENTS + 1
    );
    assert!(took < TIMEOUT / 2, "the 503 took {took:?}");
    // A silent client is closed once its time is up; then scrapes are served again.
    let t0 = Instant::now();
    let mut b = [0u8; 64];
    let n = silent[0].read(&mut b).unwrap_or(0);
    assert_eq!(n, 0, "a silent client got an answer");
    let waited = t0.elapsed();
    assert!(
        waited < TIMEOUT + Duration::from_secs(2),
        "a silent client was kept {waited:?} (its timeout is {TIMEOUT:?})"
    );
    // The others' time ran out with it: each is closed too before the next scrape (read
    // instead of allowing them a fixed moment, which a loaded machine may overrun).
    for s in &mut silent[1..] {
        assert_eq!(
            s.read(&mut b).unwrap_or(0),
            0,
            "a silent client got an answer"
        );
    }
    silent.clear();
    let (status, body, _) = scrape(addr);
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
}

#[test]
fn a_client_sending_its_request_a_byte_at_a_time_is_dropped_when_its_time_is_up() {
    // Every byte comes before a per-read timeout would fire: only a deadline for the whole
    // request stops it.
    let (_d, addr) = daemon();
    let mut s = idle(addr);
    s.write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ").unwrap();
    let t0 = Instant::now();
    let limit = TIMEOUT + Duration::from_secs(3);
    loop {
        std::thread::sleep(Duration::from_millis(250));
        if s.write_all(b"a").is_err() {
            break;
        }
        assert!(
            t0.elapsed() < limit,
            "a trickling client was kept {:?} (its timeout is {TIMEOUT:?})",
            t0.elapsed()
        );
    }
}

/// A CDP journal's state is exported (`twinblk_cdp_journal_state`, one series per state, 1 for
/// the current one, as `cdp_status`'s `journal`; `twinblk_cdp_catching_up`), so an alert can
/// fire on a journal that stopped: before, no CDP metric existed and a degraded journal was
/// silent to monitoring.
#[test]
fn a_cdp_journal_state_is_exported_and_follows_cdp_disable() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ctl.sock");
    let text = format!(
        "[reactor]\ncores=[0]\npin=false\n[nbd]\nlisten=[]\n[nvmf]\nlisten=[]\n[control]\nsocket='{}'\nmetrics='127.0.0.1:0'\n[[volume]]\nname='db'\nbackend='malloc'\nsize='4MiB'\n[volume.cdp]\ndir='{}'\nsegment_size='4MiB'\n[[volume]]\nname='plain'\nbackend='malloc'\nsize='4MiB'\n",
        sock.display(),
        dir.path().join("j").display()
    );
    let cfg = twinblk::control::config::Config::from_toml(&text).expect("test config");
    let d = twinblk::Daemon::start(&cfg).expect("daemon starts");
    let addr = d.metrics_addr().expect("a metrics endpoint");
    let (status, body, _) = scrape(addr);
    assert!(status.contains("200"), "{status}");
    for want in [
        "# TYPE twinblk_cdp_journal_state gauge",
        "twinblk_cdp_journal_state{volume=\"db\",state=\"running\"} 1",
        "twinblk_cdp_journal_state{volume=\"db\",state=\"degraded\"} 0",
        "twinblk_cdp_journal_state{volume=\"db\",state=\"off\"} 0",
        "twinblk_cdp_catching_up{volume=\"db\"} 0",
    ] {
        assert!(body.contains(want), "{want} missing from:\n{body}");
    }
    assert!(
        !body.contains("volume=\"plain\",state=\"running\""),
        "{body}"
    );
    let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    c.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"cdp_disable\",\"params\":{\"volume\":\"db\"}}\n")
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&c), &mut line).unwrap();
    assert!(line.contains("\"result\""), "{line}");
    let (_, body, _) = scrape(addr);
    for want in [
        "twinblk_cdp_journal_state{volume=\"db\",state=\"running\"} 0",
        "twinblk_cdp_journal_state{volume=\"db\",state=\"off\"} 1",
    ] {
        assert!(body.contains(want), "{want} missing from:\n{body}");
    }
    drop(d);
}
