//! `twinblk-ctl` against a real two-site cluster on loopback: two twinblk daemons (the same
//! `Daemon` that `twinblk serve` runs, started in this test process so the test needs no
//! binary from another crate) mirroring a volume, with a witness, each with its control
//! socket; the `twinblk-ctl` binary is run as an operator would.

use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod common;

use common::{KEY, Witness, ctl, text};

fn free_port() -> u16 {
    common::free_port(104_729)
}

/// One site: a daemon with a control socket at `dir/NAME.sock`, mirroring `vol0`.
fn site(
    dir: &Path,
    me: &str,
    peer: &str,
    port: u16,
    peer_port: u16,
    w: SocketAddr,
) -> twinblk::Daemon {
    let peer_addr: SocketAddr = format!("127.0.0.1:{peer_port}").parse().unwrap();
    site_via(dir, me, peer, port, peer_addr, w)
}

/// As [`site`], reaching its peer at `peer_addr` (e.g. through twinlink).
fn site_via(
    dir: &Path,
    me: &str,
    peer: &str,
    port: u16,
    peer_addr: SocketAddr,
    w: SocketAddr,
) -> twinblk::Daemon {
    let key = dir.join("witness.key");
    std::fs::write(&key, KEY).unwrap();
    let text = format!(
        "[reactor]\ncores=[0]\npin=false\n[nbd]\nlisten=['127.0.0.1:0']\n[nvmf]\nlisten=['127.0.0.1:0']\n\
         [control]\nsocket='{}'\nmetrics='127.0.0.1:0'\n\
         [mirror]\nsite='{me}'\npeer_site='{peer}'\nlisten=['127.0.0.1:{port}']\n\
         peer='{peer_addr}'\npeer_timeout_ms=10000\npeer_dead_ms=400\n\
         witness='{w}'\nwitness_key_file='{}'\nwitness_timeout_ms=1500\n\
         [[volume]]\nname='vol0'\nbackend='malloc'\nsize='4MiB'\nmirror=true\nleader='a'\n\
         [[volume]]\nname='scratch'\nbackend='malloc'\nsize='1MiB'\n",
        dir.join(format!("{me}.sock")).display(),
        key.display(),
    );
    let cfg = twinblk::control::config::Config::from_toml(&text).expect("config");
    twinblk::Daemon::start(&cfg).expect("daemon starts")
}

/// `GET /metrics` from a site's metrics endpoint; the body (after checking the status).
fn scrape(addr: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.to_string()
}

/// `promtool check metrics` (Prometheus's own linter of the exposition format and naming).
fn promtool_check_metrics(text: &str) {
    use std::io::Write;
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is not installed: run the README's test command (Debian's prometheus package)");
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited")
}

fn mirror_state(sock: &Path) -> String {
    twinblk_tools::ctl::call(sock, "mirror_status", Value::Null)
        .ok()
        .and_then(|v| v[0]["state"].as_str().map(str::to_string))
        .unwrap_or_default()
}

fn wait_state(sock: &Path, want: &str, within: Duration) {
    let t = Instant::now();
    while mirror_state(sock) != want {
        assert!(
            t.elapsed() < within,
            "{}: state {:?}, never {want}",
            sock.display(),
            mirror_state(sock)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn status_and_verbs_on_a_two_site_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let w = Witness::start(dir);
    let (pa, pb) = (free_port(), free_port());
    let a = site(dir, "a", "b", pa, pb, w.addr);
    let mut b = site(dir, "b", "a", pb, pa, w.addr);
    let (sa, sb) = (dir.join("a.sock"), dir.join("b.sock"));
    let (arg_a, arg_b) = (
        format!("--socket=a={}", sa.display()),
        format!("--socket=b={}", sb.display()),
    );
    let ws = format!("--witness-state={}", w.state.display());
    wait_state(&sa, "up", Duration::from_secs(10));
    wait_state(&sb, "up", Duration::from_secs(10));
    // Both sites have heard from the witness once (status wants it reachable).
    let t = Instant::now();
    loop {
        let o = ctl(&[&arg_a, &arg_b, "status", &ws]);
        if code(&o) == 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "never in sync:\n{}",
            text(&o)
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // In sync: exit 0, one screen naming both sites and the volume.
    let o = ctl(&[&arg_a, &arg_b, "status", &ws]);
    let screen = text(&o);
    eprintln!("{screen}");
    assert_eq!(code(&o), 0, "{screen}");
    assert!(screen.contains("everything in sync"), "{screen}");
    assert!(
        screen.contains("group vol0") && screen.contains("volume vol0"),
        "{screen}"
    );
    assert!(
        screen.contains("optimized") && screen.contains("non_optimized"),
        "{screen}"
    );
    assert!(
        screen.contains("witness state file: holder none, epoch 0"),
        "{screen}"
    );
    assert!(
        screen.contains("unmirrored volumes") && screen.contains("scratch"),
        "{screen}"
    );

    // The same as JSON.
    let o = ctl(&[&arg_a, &arg_b, "status", "--json", &ws]);
    assert_eq!(code(&o), 0);
    let st: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st["in_sync"], true, "{st}");
    let vol = &st["groups"][0]["volumes"][0];
    assert_eq!(vol["volume"], "vol0");
    let sites = vol["sites"].as_array().unwrap();
    assert_eq!(sites.len(), 2);
    for (s, role, path) in [
        (&sites[0], "leader", "optimized"),
        (&sites[1], "follower", "non_optimized"),
    ] {
        assert_eq!(s["mirror"]["state"], "up", "{s}");
        assert_eq!(s["mirror"]["link_up"], true, "{s}");
        assert_eq!(s["mirror"]["role"], role, "{s}");
        assert_eq!(s["mirror"]["path_state"], path, "{s}");
        assert_eq!(s["mirror"]["witness"]["reachable"], true, "{s}");
        assert_eq!(s["mirror"]["witness"]["holder"], Value::Null, "{s}");
    }
    assert_eq!(st["sites"][0]["name"], "a");
    assert_eq!(st["sites"][0]["site_id"], 1);

    // Each site's metrics endpoint, scraped as Prometheus would.
    let m = scrape(a.metrics_addr().expect("metrics endpoint"));
    for want in [
        "twinblk_volume_ops_total{volume=\"vol0\"}",
        "twinblk_volume_written_bytes_total{volume=\"scratch\"}",
        "twinblk_reactor_busy_seconds_total{reactor=\"0\"}",
        "twinblk_mirror_state{volume=\"vol0\",state=\"up\"} 1",
        "twinblk_mirror_state{volume=\"vol0\",state=\"survivor\"} 0",
        "twinblk_mirror_path_state{volume=\"vol0\",state=\"optimized\"} 1",
        "twinblk_mirror_link_up{volume=\"vol0\"} 1",
        "twinblk_mirror_dirty_bytes{volume=\"vol0\"} 0",
        "twinblk_mirror_backlog_bytes{volume=\"vol0\"}",
        "twinblk_mirror_link_rtt_p50_seconds{volume=\"vol0\"}",
        "twinblk_witness_reachable{group=\"vol0\"} 1",
        "twinblk_witness_grant_held{group=\"vol0\"} 0",
    ] {
        assert!(m.contains(want), "{want} missing from:\n{m}");
    }
    // Prometheus conventions: every counter ends in _total, every name has the prefix.
    for l in m.lines().filter(|l| l.starts_with("# TYPE ")) {
        let w: Vec<&str> = l.split(' ').collect();
        assert!(w[2].starts_with("twinblk_"), "{l}");
        assert_eq!(w[3] == "counter", w[2].ends_with("_total"), "{l}");
    }
    promtool_check_metrics(&m);
    // Every metric the alert rules and the dashboard use is exported.
    let deploy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    for f in [
        "prometheus/twinblk-alerts.yml",
        "grafana/twinblk-dashboard.json",
    ] {
        let text = std::fs::read_to_string(deploy.join(f)).unwrap();
        let mut used: Vec<&str> = text
            .match_indices("twinblk_")
            .map(|(i, _)| {
                let rest = &text[i..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            .collect();
        used.sort_unstable();
        used.dedup();
        assert!(used.len() >= 5, "{f}: {used:?}");
        for name in used {
            assert!(
                m.contains(&format!("# TYPE {name} ")),
                "{f} uses {name}, which the site does not export"
            );
        }
    }
    let b_metrics = scrape(b.metrics_addr().unwrap());
    assert!(
        b_metrics.contains("twinblk_mirror_path_state{volume=\"vol0\",state=\"non_optimized\"} 1"),
        "{b_metrics}"
    );

    // --watch with --count: one JSON line per screen.
    let o = ctl(&[
        &arg_a, &arg_b, "status", "--json", "--watch", "0.1", "--count", "2",
    ]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let lines: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);

    // Raw methods, old form and `call`.
    let o = ctl(&[&format!("--socket={}", sa.display()), "mirror_status"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["volume"], "vol0");
    let o = ctl(&[&format!("--socket={}", sa.display()), "call", "daemon_info"]);
    assert_eq!(code(&o), 0);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["mirror"]["site"], "a");
    let o = ctl(&[
        &format!("--socket={}", sa.display()),
        "call",
        "no_such_method",
    ]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(text(&o).contains("-32601"), "{}", text(&o));
    let o = ctl(&[
        "--socket",
        &dir.join("nobody.sock").display().to_string(),
        "status",
    ]);
    assert_eq!(code(&o), 4, "{}", text(&o));
    assert!(text(&o).contains("NOT ANSWERING"), "{}", text(&o));

    // Takeover needs its flag; with the peer connected it does nothing.
    let o = ctl(&[&arg_b, "takeover", "vol0"]);
    assert_eq!(code(&o), 5, "{}", text(&o));
    assert_eq!(mirror_state(&sb), "up");
    let o = ctl(&[
        &arg_b,
        "takeover",
        "vol0",
        "--accept-data-loss",
        "--wait",
        "3",
    ]);
    assert_eq!(code(&o), 6, "{}", text(&o));
    assert!(text(&o).contains("still sees its peer"), "{}", text(&o));
    let o = ctl(&[&arg_b, "takeover", "nothere", "--accept-data-loss"]);
    assert_eq!(code(&o), 1, "{}", text(&o));

    // Resync controls: pause, a rate, resume; a bad rate is refused (exit 1, the reason).
    let o = ctl(&[&arg_b, "resync", "vol0", "pause"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(text(&o).contains("\"paused\": true"), "{}", text(&o));
    let o = ctl(&[&arg_b, "resync", "vol0", "rate", "8388608"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(text(&o).contains("8388608"), "{}", text(&o));
    let o = ctl(&[&arg_b, "resync", "vol0", "rate", "5"]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(text(&o).contains("at least"), "{}", text(&o));
    let o = ctl(&[&arg_b, "resync", "vol0", "rate"]);
    assert_eq!(code(&o), 2, "{}", text(&o));
    let o = ctl(&[&arg_b, "resync", "vol0", "resume"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(text(&o).contains("\"paused\": false"), "{}", text(&o));

    // Site b goes away: a is granted survivorship by the witness.
    b.stop();
    drop(b);
    wait_state(&sa, "survivor", Duration::from_secs(10));
    let o = ctl(&[&arg_a, &arg_b, "status", &ws]);
    let screen = text(&o);
    eprintln!("{screen}");
    assert_eq!(code(&o), 4, "b does not answer:\n{screen}");
    assert!(
        screen.contains("NOT IN SYNC") && screen.contains("survivor"),
        "{screen}"
    );
    // Asking only a: every site asked answered, but nothing is in sync.
    let o = ctl(&[&arg_a, "status", "--json", &ws]);
    assert_eq!(code(&o), 3, "{}", text(&o));
    let st: Value = serde_json::from_slice(&o.stdout).unwrap();
    let m = &st["groups"][0]["volumes"][0]["sites"][0]["mirror"];
    assert_eq!(m["state"], "survivor", "{st}");
    assert_eq!(m["path_state"], "optimized", "{st}");
    assert_eq!(m["link_up"], false, "{st}");
    assert_eq!(m["witness"]["holder"], 1, "{st}");
    assert_eq!(m["witness"]["last_answer"], "granted", "{st}");
    let epoch = m["witness"]["epoch"].as_u64().unwrap();
    assert!(epoch >= 1, "{st}");
    // The witness's own state file says the same.
    let rec = &st["groups"][0]["witness_record"];
    assert_eq!(rec["holder"], 1, "{st}");
    assert_eq!(rec["epoch"], epoch, "{st}");
    let m = scrape(a.metrics_addr().unwrap());
    assert!(
        m.contains("twinblk_mirror_state{volume=\"vol0\",state=\"survivor\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("twinblk_witness_grant_held{group=\"vol0\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("twinblk_mirror_link_up{volume=\"vol0\"} 0"),
        "{m}"
    );
    let problems = st["problems"].to_string();
    assert!(problems.contains("state survivor"), "{problems}");
    assert!(problems.contains("holds the survivor grant"), "{problems}");
    drop(a);
}

#[test]
fn a_site_that_is_not_there_is_reported_not_guessed() {
    let tmp = tempfile::tempdir().unwrap();
    let st = twinblk_tools::ctl::status(
        &[
            format!("a={}", tmp.path().join("a.sock").display())
                .parse()
                .unwrap(),
            format!("b={}", tmp.path().join("b.sock").display())
                .parse()
                .unwrap(),
        ],
        Some(&tmp.path().join("no.state")),
    );
    assert!(!st.in_sync);
    assert_eq!(st.exit_code(), 4);
    assert_eq!(st.sites[0].name, "a");
    assert!(!st.sites[0].reachable);
    assert!(
        st.problems.iter().any(|p| p.contains("witness state file")),
        "{:?}",
        st.problems
    );
}

/// The sites' link goes through twinlink: its round trip shows in the status, a gray failure
/// (cut both ways, connections left open) makes the leader the survivor and the status says
/// so, and after the restore the sites resync and the status is back to exit 0.
#[test]
fn status_through_twinlink_delay_and_a_gray_failure() {
    use twinblk_tools::twinlink::{Dir, LinkSpec, Proxy, Shape, ShapePatch};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let w = Witness::start(dir);
    let (pa, pb) = (free_port(), free_port());
    let link = |name: &str, to: u16| LinkSpec {
        name: name.into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        target: format!("127.0.0.1:{to}").parse().unwrap(),
        udp: false,
    };
    let rtt = Shape {
        delay_ms: 2.5,
        ..Shape::default()
    };
    let proxy = Proxy::start(
        &[(link("a2b", pb), [rtt; 2]), (link("b2a", pa), [rtt; 2])],
        16 << 20,
    )
    .unwrap();
    let a = site_via(dir, "a", "b", pa, proxy.addr("a2b").unwrap(), w.addr);
    let b = site_via(dir, "b", "a", pb, proxy.addr("b2a").unwrap(), w.addr);
    let (sa, sb) = (dir.join("a.sock"), dir.join("b.sock"));
    let (arg_a, arg_b) = (
        format!("--socket=a={}", sa.display()),
        format!("--socket=b={}", sb.display()),
    );
    wait_state(&sa, "up", Duration::from_secs(10));
    wait_state(&sb, "up", Duration::from_secs(10));
    let status = || {
        let o = ctl(&[&arg_a, &arg_b, "status", "--json"]);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        (code(&o), v)
    };
    let wait_for = |what: &str, ok: &dyn Fn(i32, &Value) -> bool, within: Duration| {
        let t = Instant::now();
        loop {
            let (c, v) = status();
            if ok(c, &v) {
                return v;
            }
            assert!(t.elapsed() < within, "never {what}: exit {c}\n{v:#}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // The link's round trip, as the leader measures it, includes twinlink's 5 ms.
    let v = wait_for(
        "in sync with a measured RTT",
        &|c, v| {
            c == 0
                && v["groups"][0]["volumes"][0]["sites"][0]["mirror"]["rtt_p50_us"]
                    .as_f64()
                    .is_some()
        },
        Duration::from_secs(10),
    );
    let rtt_us = v["groups"][0]["volumes"][0]["sites"][0]["mirror"]["rtt_p50_us"]
        .as_f64()
        .unwrap();
    // At least the 5 ms twinlink adds (its accuracy is tested in tests/twinlink.rs; the
    // sites' own PING turnaround varies with the load of a shared machine).
    assert!(
        (5000.0..50_000.0).contains(&rtt_us),
        "link RTT {rtt_us} µs with 5 ms added"
    );

    // Gray failure: nothing passes, nothing is closed.
    let cut = |on: bool| {
        let p = ShapePatch {
            cut: Some(on),
            ..Default::default()
        };
        proxy.set(None, Dir::Both, &p).unwrap();
    };
    cut(true);
    let t = Instant::now();
    let v = wait_for(
        "a survivor",
        &|c, v| {
            let s = &v["groups"][0]["volumes"][0]["sites"];
            c == 3 && s[0]["mirror"]["state"] == "survivor" && s[1]["mirror"]["state"] == "fenced"
        },
        Duration::from_secs(10),
    );
    eprintln!(
        "gray failure: a survivor and b fenced after {:?}",
        t.elapsed()
    );
    let s = &v["groups"][0]["volumes"][0]["sites"];
    assert_eq!(s[0]["mirror"]["witness"]["holder"], 1, "{v:#}");
    assert_eq!(s[1]["mirror"]["path_state"], "inaccessible", "{v:#}");
    assert!(
        proxy
            .status()
            .iter()
            .map(|l| l.open_connections)
            .sum::<u64>()
            >= 1,
        "the cut closed the connections: {:?}",
        proxy.status()
    );

    // The fenced site asks for a takeover: the witness refuses (a holds the group), and the
    // tool reports the witness's answer.
    let o = ctl(&[
        &arg_b,
        "takeover",
        "vol0",
        "--accept-data-loss",
        "--wait",
        "8",
        "--json",
    ]);
    assert_eq!(code(&o), 6, "{}", text(&o));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["answered"], true, "{r}");
    assert_eq!(r["granted"], false, "{r}");
    assert_eq!(r["witness_answer"], "denied", "{r}");
    assert_eq!(r["witness"]["holder"], 1, "{r}");
    assert_eq!(r["state"], "fenced", "{r}");
    assert_eq!(mirror_state(&sa), "survivor");

    // A write at the survivor: the status shows it dirty, as the data plane counts it.
    let nvmf = |d: &twinblk::Daemon| {
        d.listeners()
            .into_iter()
            .find(|(p, _)| *p == twinblk::daemon::Proto::Nvmf)
            .unwrap()
            .1
    };
    const NQN: &str = "nqn.2026-11.io.twinblk:vol0";
    let opts = twinblk_tools::nvmf::Opts::default();
    let data: Vec<u8> = (0..65536u32)
        .map(|i| (i.wrapping_mul(7) + 3) as u8)
        .collect();
    {
        let c = twinblk_tools::nvmf::Controller::connect(nvmf(&a), NQN, &opts).unwrap();
        let mut q = c.io_queue(1, 8).unwrap();
        q.write(1, 128, &data, 512, false).unwrap();
    }
    let v = wait_for(
        "dirty bytes at the survivor",
        &|c, v| {
            c == 3
                && v["groups"][0]["volumes"][0]["sites"][0]["mirror"]["dirty_bytes"]
                    .as_u64()
                    .is_some_and(|d| d >= 65536)
        },
        Duration::from_secs(5),
    );
    assert!(v["problems"].to_string().contains("dirty bytes"), "{v:#}");

    // Restore: the sites find each other again, resync, and the status is clean.
    cut(false);
    let t = Instant::now();
    let v = wait_for("back in sync", &|c, _| c == 0, Duration::from_secs(30));
    eprintln!("in sync again {:?} after the restore", t.elapsed());
    let s = &v["groups"][0]["volumes"][0]["sites"];
    assert_eq!(s[0]["mirror"]["dirty_bytes"], 0, "{v:#}");
    assert!(
        s[0]["mirror"]["resync_bytes"].as_u64().unwrap() >= 65536,
        "{v:#}"
    );
    // And the data plane agrees: the follower has the survivor's write.
    let c = twinblk_tools::nvmf::Controller::connect(nvmf(&b), NQN, &opts).unwrap();
    let mut q = c.io_queue(1, 8).unwrap();
    let t = Instant::now();
    let got = loop {
        match q.read(1, 128, 128, 512) {
            Ok(d) => break d,
            // A read before the follower's read lease is a path error: try again.
            Err(e) if t.elapsed() < Duration::from_secs(5) => {
                eprintln!("read at b: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("read at b: {e}"),
        }
    };
    assert!(
        got == data,
        "the follower does not hold the survivor's write"
    );
    drop((c, q));
    drop((a, b));
}

/// One site whose mirrored `vol0` is an O_DIRECT file (`dir/NAME.img`, 4 MiB, 4 KiB blocks),
/// with an unmirrored RAM volume `scratch`.
fn file_site(
    dir: &Path,
    me: &str,
    peer: &str,
    port: u16,
    peer_port: u16,
    w: SocketAddr,
) -> twinblk::Daemon {
    let key = dir.join("witness.key");
    std::fs::write(&key, KEY).unwrap();
    let img = dir.join(format!("{me}.img"));
    std::fs::File::create(&img)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let text = format!(
        "[reactor]\ncores=[0]\npin=false\n[nbd]\nlisten=['127.0.0.1:0']\n[nvmf]\nlisten=['127.0.0.1:0']\n\
         [control]\nsocket='{}'\n\
         [mirror]\nsite='{me}'\npeer_site='{peer}'\nlisten=['127.0.0.1:{port}']\n\
         peer='127.0.0.1:{peer_port}'\npeer_timeout_ms=10000\npeer_dead_ms=400\n\
         witness='{w}'\nwitness_key_file='{}'\nwitness_timeout_ms=1500\n\
         [[volume]]\nname='vol0'\nbackend='uring'\npath='{}'\nsize='4MiB'\nblock_size=4096\nmirror=true\nleader='a'\n\
         [[volume]]\nname='scratch'\nbackend='malloc'\nsize='1MiB'\n",
        dir.join(format!("{me}.sock")).display(),
        key.display(),
        img.display(),
    );
    let cfg = twinblk::control::config::Config::from_toml(&text).expect("config");
    twinblk::Daemon::start(&cfg).expect("daemon starts")
}

fn listener(d: &twinblk::Daemon, proto: twinblk::daemon::Proto) -> SocketAddr {
    d.listeners()
        .into_iter()
        .find(|(p, _)| *p == proto)
        .expect("listener")
        .1
}

/// Overwrite `len` bytes at `offset` of a replica's backing file behind its daemon's back.
fn scribble(file: &Path, offset: u64, byte: u8, len: usize) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.write_all_at(&vec![byte; len], offset).unwrap();
    f.sync_all().unwrap();
}

fn file_crc(file: &Path, offset: u64, len: usize) -> u32 {
    use std::os::unix::fs::FileExt;
    let mut b = vec![0u8; len];
    std::fs::File::open(file)
        .unwrap()
        .read_exact_at(&mut b, offset)
        .unwrap();
    crc_fast::crc32_iscsi(&b)
}

fn checksums(sock: &Path, params: Value) -> Result<Value, String> {
    twinblk_tools::ctl::call(sock, "volume_checksums", params).map_err(|e| e.to_string())
}

#[test]
fn verify_compares_each_sites_own_replica_and_reports_the_regions_that_differ() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let w = Witness::start(dir);
    let (pa, pb) = (free_port(), free_port());
    let a = file_site(dir, "a", "b", pa, pb, w.addr);
    let mut b = Some(file_site(dir, "b", "a", pb, pa, w.addr));
    let (sa, sb) = (dir.join("a.sock"), dir.join("b.sock"));
    let (ia, ib) = (dir.join("a.img"), dir.join("b.img"));
    let (arg_a, arg_b) = (
        format!("--socket=a={}", sa.display()),
        format!("--socket=b={}", sb.display()),
    );
    wait_state(&sa, "up", Duration::from_secs(20));
    wait_state(&sb, "up", Duration::from_secs(20));

    // Data written through site a (NVMe/TCP), mirrored to b.
    let nv = listener(&a, twinblk::daemon::Proto::Nvmf);
    let ctrl = twinblk_tools::nvmf::Controller::connect(
        nv,
        "nqn.2026-11.io.twinblk:vol0",
        &twinblk_tools::nvmf::Opts::default(),
    )
    .unwrap();
    let mut q = ctrl.io_queue(1, 32).unwrap();
    for (lba, fill) in [(0u64, 0x11u8), (100, 0x22), (700, 0x33), (1023, 0x44)] {
        q.write(1, lba, &vec![fill; 4096], 4096, false).unwrap();
    }
    drop(q);
    drop(ctrl);

    // Identical: exit 0, every region compared, the region size and the rate as given.
    let o = ctl(&[
        &arg_a,
        &arg_b,
        "--json",
        "verify",
        "vol0",
        "--region",
        "65536",
        "--rate",
        "100000000",
    ]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["identical"], true, "{r}");
    assert_eq!(r["regions_compared"], 64, "{r}");
    assert_eq!(r["region"], 65536);
    assert_eq!(r["rate_limit_bytes_per_s"], 100_000_000);
    assert!(r["differing"].as_array().unwrap().is_empty());
    let o = ctl(&[&arg_a, &arg_b, "verify", "vol0"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(text(&o).contains("replicas identical"), "{}", text(&o));
    // One site's socket twice (a typo, or another spelling of its path): a replica compared
    // with itself is no comparison, never "identical".
    let spelt = format!(
        "--socket=b={}/./{}",
        sa.parent().unwrap().display(),
        sa.file_name().unwrap().to_str().unwrap()
    );
    for args in [[&arg_a, &arg_a], [&arg_a, &spelt]] {
        let o = ctl(&[args[0], args[1], "verify", "vol0"]);
        assert_eq!(code(&o), 2, "{args:?}: {}", text(&o));
        assert!(text(&o).contains("reach the same site"), "{}", text(&o));
        assert!(!text(&o).contains("identical"), "{}", text(&o));
    }

    // One block changed in a's file, another in b's, while the daemons run.
    let (at_a, at_b) = ((1 << 20) + 8192, 3 << 20);
    scribble(&ia, at_a, 0xEE, 4096);
    scribble(&ib, at_b, 0xDD, 4096);
    let o = ctl(&[
        &arg_a,
        &arg_b,
        "--json",
        "verify",
        "vol0",
        "--region",
        "65536",
        "--rate",
        "100000000",
    ]);
    assert_eq!(code(&o), 7, "{}", text(&o));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["identical"], false);
    assert_eq!(
        r["differing"],
        serde_json::json!([
            {"offset": 1 << 20, "length": 65536},
            {"offset": 3 << 20, "length": 65536},
        ]),
        "{r}"
    );
    let o = ctl(&[&arg_a, &arg_b, "verify", "vol0", "--region", "4096"]);
    assert_eq!(code(&o), 7, "{}", text(&o));
    assert!(
        text(&o).contains("REPLICAS DIFFER: 2 region(s)"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains(&format!("{at_a}")), "{}", text(&o));

    // Each site checksums its own replica: its file's bytes, never the peer's.
    for (sock, file) in [(&sa, &ia), (&sb, &ib)] {
        for at in [1u64 << 20, 3 << 20] {
            let v = checksums(
                sock,
                serde_json::json!({"volume": "vol0", "offset": at, "length": 65536, "region": 65536}),
            )
            .unwrap();
            assert_eq!(
                v["crc32c"][0].as_u64(),
                Some(u64::from(file_crc(file, at, 65536))),
                "{} at {at}: {v}",
                sock.display()
            );
        }
    }
    let crc_at = |s: &Path, at: u64| {
        checksums(
            s,
            serde_json::json!({"volume": "vol0", "offset": at, "length": 4096, "region": 4096}),
        )
        .unwrap()["crc32c"][0]
            .as_u64()
            .unwrap()
    };
    assert_ne!(crc_at(&sa, at_a), crc_at(&sb, at_a));
    assert_eq!(
        crc_at(&sa, at_a),
        u64::from(crc_fast::crc32_iscsi(&[0xEE; 4096]))
    );
    assert_eq!(
        crc_at(&sb, at_b),
        u64::from(crc_fast::crc32_iscsi(&[0xDD; 4096]))
    );

    // Bad parameters: clear errors, and the daemon carries on.
    for (params, want) in [
        (
            serde_json::json!({"volume": "nope", "region": 4096}),
            "no volume named",
        ),
        (
            serde_json::json!({"volume": "vol0", "region": 0}),
            "at least one block",
        ),
        (
            serde_json::json!({"volume": "vol0", "region": 1000}),
            "multiple of the volume's block size",
        ),
        (
            serde_json::json!({"volume": "vol0", "region": 4096, "offset": 4 << 20}),
            "past the end",
        ),
        (
            serde_json::json!({"volume": "vol0", "region": 4096, "offset": 0, "length": 8 << 20}),
            "past the end",
        ),
        (
            serde_json::json!({"volume": "vol0", "region": -1}),
            "whole number",
        ),
        (serde_json::json!({"volume": "vol0"}), "region"),
        (
            serde_json::json!({"volume": "scratch", "region": 4096}),
            "not mirrored",
        ),
        (Value::Null, "params"),
    ] {
        let e = checksums(&sa, params.clone()).unwrap_err();
        assert!(e.contains(want), "{params}: {e}");
    }
    let o = ctl(&[&arg_a, &arg_b, "verify", "vol0", "--region", "1000"]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(
        text(&o).contains("multiple of the volume's block size"),
        "{}",
        text(&o)
    );
    let o = ctl(&[&arg_a, &arg_b, "verify", "nope"]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(text(&o).contains("no volume named"), "{}", text(&o));
    let o = ctl(&[&arg_a, &arg_b, "verify", "scratch"]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(text(&o).contains("not mirrored"), "{}", text(&o));
    let o = ctl(&[&arg_a, &arg_b, "verify", "vol0", "--region", "0"]);
    assert_eq!(code(&o), 2, "{}", text(&o));
    let o = ctl(&[&arg_a, "verify", "vol0"]);
    assert_eq!(code(&o), 2, "{}", text(&o));
    assert_eq!(mirror_state(&sa), "up", "the daemon still serves");

    // A site gone: unreachable (4); the survivor's replica is not compared (3).
    drop(b.take());
    let o = ctl(&[&arg_a, &arg_b, "verify", "vol0"]);
    assert_eq!(code(&o), 4, "{}", text(&o));
    let t = Instant::now();
    while mirror_state(&sa) == "up" {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "a never noticed b is gone"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = ctl(&[&arg_a, &arg_a, "verify", "vol0"]);
    assert_eq!(code(&o), 3, "{}", text(&o));
    assert!(text(&o).contains("in sync"), "{}", text(&o));
    drop(a);
}

/// Open an NBD connection to `export` (fixed newstyle, EXPORT_NAME) and keep it in
/// transmission.
fn nbd_connect(addr: SocketAddr, export: &str) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut greet = [0u8; 18];
    s.read_exact(&mut greet).unwrap();
    assert_eq!(&greet[..8], b"NBDMAGIC");
    assert_eq!(&greet[8..16], b"IHAVEOPT");
    // Client flags: fixed newstyle, no zeroes.
    s.write_all(&3u32.to_be_bytes()).unwrap();
    let mut opt = b"IHAVEOPT".to_vec();
    opt.extend_from_slice(&1u32.to_be_bytes()); // NBD_OPT_EXPORT_NAME
    opt.extend_from_slice(&(export.len() as u32).to_be_bytes());
    opt.extend_from_slice(export.as_bytes());
    s.write_all(&opt).unwrap();
    let mut answer = [0u8; 10]; // size, transmission flags
    s.read_exact(&mut answer).unwrap();
    s
}

fn host_list(sock: &Path, params: Value) -> Vec<Value> {
    twinblk_tools::ctl::call(sock, "host_list", params)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap()
}

/// Wait until `host_list` at `sock` has exactly `n` records.
fn wait_hosts(sock: &Path, n: usize) -> Vec<Value> {
    let t = Instant::now();
    loop {
        let l = host_list(sock, Value::Null);
        if l.len() == n {
            return l;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{} host(s) listed, never {n}: {l:?}",
            l.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn hosts_lists_nbd_and_nvme_connections_until_they_close() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let w = Witness::start(dir);
    let (pa, pb) = (free_port(), free_port());
    let a = site(dir, "a", "b", pa, pb, w.addr);
    let b = site(dir, "b", "a", pb, pa, w.addr);
    let sa = dir.join("a.sock");
    let arg_a = format!("--socket=a={}", sa.display());
    wait_state(&sa, "up", Duration::from_secs(20));
    assert!(wait_hosts(&sa, 0).is_empty());

    let nbd = nbd_connect(listener(&a, twinblk::daemon::Proto::Nbd), "scratch");
    let host = twinblk_tools::nvmf::Opts::default();
    let ctrl = twinblk_tools::nvmf::Controller::connect(
        listener(&a, twinblk::daemon::Proto::Nvmf),
        "nqn.2026-11.io.twinblk:vol0",
        &host,
    )
    .unwrap();
    let q = ctrl.io_queue(1, 32).unwrap();
    let l = wait_hosts(&sa, 3);
    let nbd_rec = l.iter().find(|h| h["proto"] == "nbd").expect("nbd listed");
    assert_eq!(nbd_rec["target"], "scratch");
    assert_eq!(nbd_rec["volumes"], serde_json::json!(["scratch"]));
    assert_eq!(
        nbd_rec["peer"].as_str(),
        Some(nbd.local_addr().unwrap().to_string().as_str())
    );
    let nv: Vec<&Value> = l.iter().filter(|h| h["proto"] == "nvmf").collect();
    assert_eq!(nv.len(), 2, "{l:?}");
    let mut queues: Vec<u64> = nv.iter().map(|h| h["queue"].as_u64().unwrap()).collect();
    queues.sort();
    assert_eq!(queues, vec![0, 1]);
    for h in &nv {
        assert_eq!(h["volumes"], serde_json::json!(["vol0"]));
        assert_eq!(h["host"].as_str(), Some(host.host.nqn.as_str()));
        assert_eq!(h["target"], "nqn.2026-11.io.twinblk:vol0");
        assert_eq!(h["controller"].as_u64(), Some(u64::from(ctrl.cntlid)));
        assert_eq!(h["inflight"], 0);
    }
    // Per volume, and through twinblk-ctl.
    let only = host_list(&sa, serde_json::json!({"volume": "vol0"}));
    assert_eq!(only.len(), 2);
    assert!(only.iter().all(|h| h["proto"] == "nvmf"));
    let e = twinblk_tools::ctl::call(&sa, "host_list", serde_json::json!({"volume": "nope"}))
        .unwrap_err();
    assert!(e.to_string().contains("no volume named"), "{e}");
    let o = ctl(&[&arg_a, "hosts"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("3 connection(s)") && t.contains("volume vol0") && t.contains("volume scratch"),
        "{t}"
    );
    assert!(t.contains(&host.host.nqn) && t.contains("q1 ctrl"), "{t}");
    let o = ctl(&[&arg_a, "--json", "hosts", "scratch"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j[0]["site"], "a");
    assert_eq!(j[0]["hosts"].as_array().unwrap().len(), 1);
    let o = ctl(&[&arg_a, "hosts", "nope"]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    // Site b serves nobody.
    let ob = ctl(&[
        &format!("--socket={}", dir.join("b.sock").display()),
        "--json",
        "hosts",
    ]);
    assert_eq!(code(&ob), 0, "{}", text(&ob));

    // Disconnected: gone.
    drop(nbd);
    let l = wait_hosts(&sa, 2);
    assert!(l.iter().all(|h| h["proto"] == "nvmf"));
    drop(q);
    drop(ctrl);
    assert!(wait_hosts(&sa, 0).is_empty());
    drop(b);
    drop(a);
}
