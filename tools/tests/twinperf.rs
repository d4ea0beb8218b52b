//! `twinperf` against a real target: the same `Daemon` that `twinblk serve` runs, started in this
//! test process on ephemeral loopback ports (as tests/ctl.rs does), and the `twinperf` binary run
//! as an operator would. Also fake NBD servers that misbehave, to check that twinperf fails
//! with a clear error instead of hanging or panicking. Assertions are on behaviour (counts,
//! verification, exit codes, output structure), never on timing.

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use twinblk_tools::perf::nbd;

/// A daemon with a 64 MiB RAM volume `vol0` on NBD, NVMe/TCP and iSCSI, and `iscsi_toml`
/// appended (e.g. a CHAP target); the daemon and its listeners.
fn daemon_with(iscsi_toml: &str) -> (twinblk::Daemon, Addrs) {
    let text = format!(
        "[reactor]\ncores=[0]\nwait='adaptive'\npin=false\n[nbd]\nlisten=['127.0.0.1:0']\n\
         [nvmf]\nlisten=['127.0.0.1:0']\n[iscsi]\nlisten=['127.0.0.1:0']\n[control]\nsocket=''\n\
         [[volume]]\nname='vol0'\nbackend='malloc'\nsize='64MiB'\n{iscsi_toml}"
    );
    let cfg = twinblk::control::config::Config::from_toml(&text).expect("config");
    let d = twinblk::Daemon::start(&cfg).expect("daemon starts");
    let find = |p| {
        d.listeners()
            .into_iter()
            .find(|(q, _)| *q == p)
            .expect("listener")
            .1
    };
    let a = Addrs {
        nbd: find(twinblk::daemon::Proto::Nbd),
        nvme: find(twinblk::daemon::Proto::Nvmf),
        iscsi: find(twinblk::daemon::Proto::Iscsi),
    };
    (d, a)
}

struct Addrs {
    nbd: SocketAddr,
    nvme: SocketAddr,
    iscsi: SocketAddr,
}

/// As [`daemon_with`], no extra configuration; (daemon, nbd, nvme) addresses.
fn daemon() -> (twinblk::Daemon, SocketAddr, SocketAddr) {
    let (d, a) = daemon_with("");
    (d, a.nbd, a.nvme)
}

const IQN: &str = "iqn.2026-11.io.twinblk:vol0";

const NQN: &str = "nqn.2026-11.io.twinblk:vol0";

/// Run twinperf; kill it (and fail) if it takes longer than `limit`.
fn twinperf(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_twinperf"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("twinperf runs");
    let t = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "twinperf {args:?} still running after {limit:?} (hung):\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Checks of a report that hold for every successful run of `ios` I/Os.
fn check_report(r: &Value, ios: u64) {
    assert_eq!(r["tool"], "twinperf");
    assert_eq!(r["ios"].as_u64(), Some(ios), "{r}");
    assert_eq!(
        r["reads"].as_u64().unwrap() + r["writes"].as_u64().unwrap(),
        ios
    );
    assert_eq!(r["errors"], 0);
    assert!(r["iops"].as_f64().unwrap() > 0.0);
    let l = &r["latency_us"];
    let f = |k: &str| l[k].as_f64().unwrap();
    assert!(f("min") > 0.0, "{l}");
    assert!(f("min") <= f("p50") && f("p50") <= f("p90") && f("p90") <= f("p99"));
    assert!(f("p99") <= f("p99_9") && f("p99_9") <= f("max"), "{l}");
    let tl = r["timeline"].as_array().unwrap();
    assert!(!tl.is_empty());
    let sum: u64 = tl.iter().map(|p| p["ios"].as_u64().unwrap()).sum();
    assert_eq!(sum, ios, "the timeline accounts for every I/O");
    assert!(r["cpu"]["us_per_io"].as_f64().unwrap() >= 0.0);
}

/// A minimal well-formedness check: declaration, one root `svg` element, every tag closed in
/// order, attributes quoted, no stray `<` or `&`.
fn check_svg(text: &str) {
    let body = text
        .strip_prefix("<?xml version=\"1.0\" encoding=\"UTF-8\"?>")
        .expect("XML declaration")
        .trim();
    let mut stack: Vec<String> = Vec::new();
    let mut rest = body;
    let mut roots = 0;
    let mut polylines = 0;
    while let Some(i) = rest.find('<') {
        let text = &rest[..i];
        assert!(!text.contains('>'), "stray '>' in {text:?}");
        for (j, _) in text.match_indices('&') {
            let ent = &text[j..];
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;"]
                    .iter()
                    .any(|e| ent.starts_with(e)),
                "bad entity in {text:?}"
            );
        }
        let end = rest[i..].find('>').expect("unclosed tag") + i;
        let tag = &rest[i + 1..end];
        assert!(!tag.contains('<'), "'<' inside tag {tag:?}");
        assert_eq!(
            tag.matches('"').count() % 2,
            0,
            "unbalanced quotes in {tag:?}"
        );
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(
                stack.pop().as_deref(),
                Some(name.trim()),
                "mismatched </{name}>"
            );
        } else {
            let name = tag
                .trim_end_matches('/')
                .split_whitespace()
                .next()
                .expect("tag name")
                .to_string();
            if stack.is_empty() {
                roots += 1;
                assert_eq!(name, "svg", "root element");
            }
            if name == "polyline" {
                polylines += 1;
            }
            if !tag.ends_with('/') {
                stack.push(name);
            }
        }
        rest = &rest[end + 1..];
    }
    assert!(stack.is_empty(), "unclosed elements {stack:?}");
    assert_eq!(roots, 1);
    assert!(rest.trim().is_empty(), "text after the root: {rest:?}");
    assert_eq!(polylines, 3, "IOPS, p50 and p99 lines");
}

#[test]
fn nbd_verified_runs_json_and_svg() {
    let (_d, nbd, _) = daemon();
    let tmp = tempfile::tempdir().unwrap();
    let svg = tmp.path().join("t.svg");
    let uri = format!("nbd://{nbd}/vol0");
    let o = twinperf(
        &[
            &uri,
            "--rw=randrw",
            "--rwmix=60",
            "--ios=20000",
            "--qd=16",
            "--conns=3",
            "--threads=2",
            "--size=8m",
            "--verify",
            "--json",
            "--svg",
            svg.to_str().unwrap(),
        ],
        Duration::from_secs(120),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let r = json(&o);
    check_report(&r, 20000);
    assert_eq!(r["proto"], "nbd");
    assert_eq!(r["rw"], "randrw");
    assert_eq!((r["qd"].as_u64(), r["conns"].as_u64()), (Some(16), Some(3)));
    assert_eq!(r["verify"]["enabled"], true);
    assert_eq!(r["verify"]["mismatches"], 0);
    assert!(
        r["verify"]["checked_reads"].as_u64().unwrap() > 0,
        "8 MiB, 20000 I/Os: reads hit written blocks"
    );
    assert!(r["read_latency_us"]["p50"].as_f64().is_some());
    assert!(r["write_latency_us"]["p50"].as_f64().is_some());
    check_svg(&std::fs::read_to_string(&svg).unwrap());

    // Sequential, large blocks, text output.
    let o = twinperf(
        &[
            &uri,
            "--rw=rw",
            "--bs=256k",
            "--ios=300",
            "--qd=4",
            "--verify",
        ],
        Duration::from_secs(120),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("ios 300 "), "{text}");
    assert!(text.contains(", 0 mismatches"), "{text}");
}

#[test]
fn nvme_verified_runs_in_capsule_and_r2t() {
    let (_d, _, nvme) = daemon();
    let uri = format!("nvme+tcp://{nvme}/{NQN}");
    // 4 KiB writes travel in the capsule, 64 KiB ones after an R2T.
    for (bs, ios) in [("4k", "20000"), ("64k", "3000")] {
        let o = twinperf(
            &[
                &uri,
                "--rw=randrw",
                "--bs",
                bs,
                "--ios",
                ios,
                "--qd=8",
                "--conns=2",
                "--size=16m",
                "--verify",
                "--json",
            ],
            Duration::from_secs(120),
        );
        assert!(o.status.success(), "bs {bs}: {}", stderr(&o));
        let r = json(&o);
        check_report(&r, ios.parse().unwrap());
        assert_eq!(r["proto"], "nvme");
        assert_eq!(r["verify"]["mismatches"], 0, "{r}");
        assert!(r["verify"]["checked_reads"].as_u64().unwrap() > 0);
    }
}

#[test]
fn iscsi_verified_runs_immediate_data_and_r2t() {
    let (_d, a) = daemon_with("");
    let uri = format!("iscsi://{}/{IQN}/0", a.iscsi);
    // 4 KiB writes go as immediate data; 512 KiB ones send 256 KiB (FirstBurstLength) that way
    // and the rest after an R2T.
    for (bs, ios) in [("4k", "20000"), ("512k", "400")] {
        let o = twinperf(
            &[
                &uri,
                "--rw=randrw",
                "--bs",
                bs,
                "--ios",
                ios,
                "--qd=8",
                "--conns=2",
                "--size=16m",
                "--verify",
                "--json",
            ],
            Duration::from_secs(120),
        );
        assert!(o.status.success(), "bs {bs}: {}", stderr(&o));
        let r = json(&o);
        check_report(&r, ios.parse().unwrap());
        assert_eq!(r["proto"], "iscsi");
        assert_eq!(r["verify"]["mismatches"], 0, "{r}");
        assert!(r["verify"]["checked_reads"].as_u64().unwrap() > 0);
    }
}

#[test]
fn iscsi_chap_login() {
    let (_d, a) = daemon_with(
        "[[iscsi.target]]\niqn='iqn.2026-11.io.twinblk:sec'\nluns=['vol0']\n\
         chap_user='alice'\nchap_secret='twelve-chars-or-more'\n",
    );
    let tmp = tempfile::tempdir().unwrap();
    let uri = format!("iscsi://{}/iqn.2026-11.io.twinblk:sec/0", a.iscsi);
    let good = tmp.path().join("good");
    let bad = tmp.path().join("bad");
    std::fs::write(&good, "twelve-chars-or-more\n").unwrap();
    std::fs::write(&bad, "not-the-secret-at-all\n").unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            uri.as_str(),
            "--rw=randrw",
            "--ios=2000",
            "--qd=4",
            "--verify",
        ];
        args.extend_from_slice(extra);
        twinperf(&args, Duration::from_secs(60))
    };
    let o = run(&[
        "--chap-user=alice",
        "--chap-secret-file",
        good.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&[
        "--chap-user=alice",
        "--chap-secret-file",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("authentication failed"),
        "{}",
        stderr(&o)
    );
    let o = run(&[]);
    assert_eq!(o.status.code(), Some(1), "CHAP is required: {}", stderr(&o));
    assert!(stderr(&o).contains("refused"), "{}", stderr(&o));
}

#[test]
fn verify_state_carries_over_and_catches_corruption() {
    let (_d, a) = daemon_with("");
    let (nbd, nvme) = (a.nbd, a.nvme);
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state.json");
    let st = state.to_str().unwrap();
    let uri = format!("nbd://{nbd}/vol0");
    // Write every 4 KiB block of the first MiB once, sequentially.
    let common = ["--size=1m", "--ios=256", "--qd=4", "--verify"];
    let mut args = vec![uri.as_str(), "--rw=write", "--verify-state", st];
    args.extend(common);
    let o = twinperf(&args, Duration::from_secs(60));
    assert!(o.status.success(), "{}", stderr(&o));

    // Unchanged, it reads back clean, over the other protocols too (same layout).
    let nvme_uri = format!("nvme+tcp://{nvme}/{NQN}");
    let iscsi_uri = format!("iscsi://{}/{IQN}/0", a.iscsi);
    for u in [uri.as_str(), nvme_uri.as_str(), iscsi_uri.as_str()] {
        let mut args = vec![u, "--rw=read", "--json", "--verify-state", st];
        args.extend(common);
        let o = twinperf(&args, Duration::from_secs(60));
        assert!(o.status.success(), "{u}: {}", stderr(&o));
        let r = json(&o);
        assert_eq!(r["verify"]["checked_reads"], 256, "{u}");
        assert_eq!(r["verify"]["mismatches"], 0, "{u}");
    }

    // Another path changes two blocks: one zeroed, one overwritten by a copy of block 0
    // (a misplaced write: right stamps, wrong place).
    let mut c = nbd::Client::connect(nbd, "vol0").unwrap();
    c.write(40 * 4096, &[0u8; 4096]).unwrap();
    let b0 = c.read(0, 4096).unwrap();
    c.write(77 * 4096, &b0).unwrap();
    drop(c);

    let mut args = vec![uri.as_str(), "--rw=read", "--json", "--verify-state", st];
    args.extend(common);
    let o = twinperf(&args, Duration::from_secs(60));
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("2 verification mismatch"),
        "{}",
        stderr(&o)
    );
    let r = json(&o);
    assert_eq!(r["verify"]["mismatches"], 2, "{r}");
    let m = r["verify"]["first_mismatches"].as_array().unwrap();
    assert_eq!(m.len(), 2);
    assert_eq!(m[0]["offset"], 40 * 4096);
    assert_eq!(m[0]["found"]["magic"], false);
    assert_eq!(m[1]["offset"], 77 * 4096);
    assert_eq!(m[1]["found"]["magic"], true);
    assert_eq!(
        m[1]["found"]["offset"], 0,
        "the copy carries block 0's stamp"
    );

    // A state file from another layout is refused.
    let o = twinperf(
        &[
            &uri,
            "--rw=read",
            "--size=2m",
            "--ios=10",
            "--verify",
            "--verify-state",
            st,
        ],
        Duration::from_secs(60),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("was written with"), "{}", stderr(&o));
}

#[test]
fn rate_limit_caps_the_count() {
    let (_d, nbd, _) = daemon();
    let uri = format!("nbd://{nbd}/vol0");
    let o = twinperf(
        &[&uri, "--rw=randread", "--seconds=1", "--rate=500", "--json"],
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let r = json(&o);
    let (ios, secs) = (r["ios"].as_f64().unwrap(), r["seconds"].as_f64().unwrap());
    // Never more than the rate allows up to the last completion (plus the first token).
    assert!(ios <= 500.0 * secs + 1.0, "{ios} I/Os in {secs} s");
    assert!(ios > 0.0);
    assert_eq!(r["rate_limit"], 500);
}

#[test]
fn bad_options_fail_cleanly() {
    let (_d, nbd, _) = daemon();
    let uri = format!("nbd://{nbd}/vol0");
    for (args, want) in [
        (vec![uri.as_str(), "--bs=1000"], "multiple of 512"),
        (vec![uri.as_str(), "--size=1g"], "past the device's end"),
        (vec![uri.as_str(), "--qd=0"], "--qd"),
        (vec!["nbd://127.0.0.1:1/vol0"], "connecting"),
        (vec!["iscsi://127.0.0.1:1/iqn.x/0"], "connecting"),
    ] {
        let o = twinperf(&args, Duration::from_secs(60));
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
    }
    let o = twinperf(&[&format!("nbd://{nbd}/nope")], Duration::from_secs(60));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("NBD_REP_ERR_UNKNOWN"), "{}", stderr(&o));
}

/// How a fake NBD server answers in the transmission phase.
#[derive(Clone, Copy)]
enum Fake {
    /// Greets with garbage.
    BadGreeting,
    /// Answers GO with an option reply claiming 1 GiB of data.
    HugeOptionReply,
    /// Replies with a wrong magic.
    BadMagic,
    /// Replies to a cookie never sent.
    UnknownCookie,
    /// Answers a read with a structured reply.
    Structured,
    /// Closes the connection after the first request.
    Close,
    /// Reads requests and never answers.
    Silent,
}

fn fake_server(mode: Fake) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        let _ = serve_fake(&mut s, mode);
        // Keep the socket open, reading, until the client gives up: closing with unread data
        // would reset the connection and could hide the reply under test.
        let mut sink = [0u8; 4096];
        while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
    });
    addr
}

fn serve_fake(s: &mut TcpStream, mode: Fake) -> std::io::Result<()> {
    if let Fake::BadGreeting = mode {
        return s.write_all(b"HELLO, THIS IS NOT NBD");
    }
    let mut g = Vec::new();
    g.extend_from_slice(&nbd::NBDMAGIC.to_be_bytes());
    g.extend_from_slice(&nbd::IHAVEOPT.to_be_bytes());
    g.extend_from_slice(&3u16.to_be_bytes());
    s.write_all(&g)?;
    let mut flags = [0u8; 4];
    s.read_exact(&mut flags)?;
    let mut oh = [0u8; 16];
    s.read_exact(&mut oh)?;
    let len = u32::from_be_bytes(oh[12..16].try_into().unwrap());
    let mut od = vec![0u8; len as usize];
    s.read_exact(&mut od)?;
    let reply = |typ: u32, data: &[u8], claimed: u32| {
        let mut r = Vec::new();
        r.extend_from_slice(&nbd::REPLY_MAGIC.to_be_bytes());
        r.extend_from_slice(&nbd::OPT_GO.to_be_bytes());
        r.extend_from_slice(&typ.to_be_bytes());
        r.extend_from_slice(&claimed.to_be_bytes());
        r.extend_from_slice(data);
        r
    };
    if let Fake::HugeOptionReply = mode {
        return s.write_all(&reply(nbd::REP_INFO, &[], 1 << 30));
    }
    let mut info = vec![0u8, 0];
    info.extend_from_slice(&(1u64 << 20).to_be_bytes());
    info.extend_from_slice(&1u16.to_be_bytes());
    s.write_all(&reply(nbd::REP_INFO, &info, info.len() as u32))?;
    s.write_all(&reply(nbd::REP_ACK, &[], 0))?;
    let mut req = [0u8; nbd::REQUEST_HEADER];
    s.read_exact(&mut req)?;
    let cookie = &req[8..16];
    let simple = |magic: u32, cookie: &[u8]| {
        let mut r = magic.to_be_bytes().to_vec();
        r.extend_from_slice(&[0; 4]);
        r.extend_from_slice(cookie);
        r
    };
    match mode {
        Fake::BadMagic => s.write_all(&simple(0xDEAD_BEEF, cookie)),
        Fake::UnknownCookie => s.write_all(&simple(nbd::SIMPLE_REPLY_MAGIC, &[0xAB; 8])),
        Fake::Structured => s.write_all(&simple(nbd::STRUCTURED_REPLY_MAGIC, cookie)),
        Fake::Close => {
            // The other three requests of --qd 4 first, so the close is a clean FIN.
            for _ in 0..3 {
                s.read_exact(&mut req)?;
            }
            s.shutdown(std::net::Shutdown::Both)
        }
        _ => Ok(()),
    }
}

#[test]
fn malformed_servers_fail_with_clear_errors() {
    for (mode, want) in [
        (Fake::BadGreeting, "not an NBD server"),
        (Fake::HugeOptionReply, "option reply of 1073741824 bytes"),
        (Fake::BadMagic, "bad NBD reply magic 0xdeadbeef"),
        (Fake::UnknownCookie, "not outstanding"),
        (Fake::Structured, "structured reply"),
        (Fake::Close, "closed the connection"),
        (Fake::Silent, "no reply from the target"),
    ] {
        let addr = fake_server(mode);
        let o = twinperf(
            &[
                &format!("nbd://{addr}/x"),
                "--seconds=30",
                "--qd=4",
                "--timeout=1",
            ],
            Duration::from_secs(30),
        );
        assert_eq!(o.status.code(), Some(1), "{want}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains(want), "wanted {want:?} in: {e}");
        assert!(!e.contains("panicked"), "{e}");
    }
}

#[test]
fn svg_checker_rejects_broken_documents() {
    let ok = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg a=\"1\"><polyline/><polyline/><polyline/><text>a &amp; b</text></svg>";
    check_svg(ok);
    for bad in [
        "<svg><polyline/><polyline/><polyline/></svg>",
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><svg><g></svg>",
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><svg><polyline/><polyline/><polyline/><text>a & b</text></svg>",
    ] {
        assert!(
            std::panic::catch_unwind(|| check_svg(bad)).is_err(),
            "accepted {bad:?}"
        );
    }
}
