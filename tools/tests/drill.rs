//! `twinblk-ctl drill` against a real two-site cluster on loopback: two twinblk sites as
//! separate processes (this test binary re-run as a site, see [`site_process`]; the sites'
//! mirror link goes through an in-process twinlink), a witness in this process, and the
//! `twinblk-ctl` binary run as an operator would. Two drills on the same cluster: `kill` of
//! site a (the leader: site b takes over after the witness's tie grace), then `cut-link`
//! (the inter-site link cut: the witness keeps a, b fences). Each must pass with RPO
//! "0 (verified)" and an RTO under the 2 s (the drill's own measurement against its
//! configured target; loopback failover is ~1 s, so the margin is about 2x), the history must
//! verify and a tampered line must not, and the HTML report must render in headless
//! Chromium without console errors (screenshot taken).

use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{KEY, Witness, ctl, text};
/// The environment variable that makes [`site_process`] run a site from this config file.
const SITE_ENV: &str = "TWINBLK_DRILL_TEST_SITE";

/// Not a test of its own: when [`SITE_ENV`] names a config, this process is a twinblk site
/// (the same `Daemon` as `twinblk serve`) until it is killed. Run without it, it does nothing.
#[test]
fn site_process() {
    let Ok(path) = std::env::var(SITE_ENV) else {
        return;
    };
    let text = std::fs::read_to_string(&path).expect("site config");
    let cfg = twinblk::control::config::Config::from_toml(&text).expect("config");
    let _d = twinblk::Daemon::start(&cfg).expect("daemon starts");
    println!("site ready");
    // Bounded only by the kill that ends it (the drill's kill command, or the test's guard).
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn free_port() -> u16 {
    common::free_port(7_919)
}

/// Kills the site processes this test started (by the PIDs in their pid files) at the end,
/// also when an assertion fails.
struct Sites(Vec<PathBuf>);

impl Drop for Sites {
    fn drop(&mut self) {
        for p in &self.0 {
            if let Some(pid) = std::fs::read_to_string(p)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
                .filter(|p| *p > 1)
            {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
}

/// Writes site `me`'s config; returns the shell commands that start it (in the background,
/// its PID in `dir/ME.pid`) and kill it. With `cdp`, the volume journals into that directory.
#[allow(clippy::too_many_arguments)]
fn site(
    dir: &Path,
    me: &str,
    peer: &str,
    mirror_port: u16,
    peer_addr: SocketAddr,
    nbd_port: u16,
    w: SocketAddr,
    cdp: Option<&Path>,
) -> (String, String) {
    let key = dir.join("witness.key");
    std::fs::write(&key, KEY).unwrap();
    let cfg = dir.join(format!("{me}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[reactor]\ncores=[0]\npin=false\n[nbd]\nlisten=['127.0.0.1:{nbd_port}']\n[nvmf]\nlisten=['127.0.0.1:0']\n\
             [control]\nsocket='{}'\n\
             [mirror]\nsite='{me}'\npeer_site='{peer}'\nlisten=['127.0.0.1:{mirror_port}']\n\
             peer='{peer_addr}'\npeer_timeout_ms=10000\npeer_dead_ms=400\n\
             witness='{w}'\nwitness_key_file='{}'\nwitness_timeout_ms=1500\n\
             [[volume]]\nname='vol0'\nbackend='malloc'\nsize='8MiB'\nmirror=true\nleader='a'\n{}",
            dir.join(format!("{me}.sock")).display(),
            key.display(),
            cdp.map(|d| format!("[volume.cdp]\ndir='{}'\n", d.display()))
                .unwrap_or_default(),
        ),
    )
    .unwrap();
    let exe = std::env::current_exe().unwrap();
    let pid = dir.join(format!("{me}.pid"));
    let start = format!(
        "{SITE_ENV}='{}' '{}' --exact site_process --nocapture --test-threads=1 >>'{}' 2>&1 & echo $! >'{}'",
        cfg.display(),
        exe.display(),
        dir.join(format!("{me}.log")).display(),
        pid.display()
    );
    let kill = format!("kill -9 \"$(cat '{}')\"", pid.display());
    (start, kill)
}

fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(st.success(), "{cmd}");
}

/// Until both sites are up, in sync and heard from the witness.
fn wait_in_sync(socks: &[PathBuf], within: Duration) {
    let t = Instant::now();
    loop {
        let ok = socks.iter().all(|s| {
            twinblk_tools::ctl::call(s, "mirror_status", Value::Null)
                .map(|v| {
                    v[0]["state"] == "up"
                        && v[0]["dirty_bytes"] == 0
                        && v[0]["resync_running"] == false
                        && v[0]["witness"]["reachable"] == true
                })
                .unwrap_or(false)
        });
        if ok {
            return;
        }
        if t.elapsed() >= within {
            let logs: String = socks
                .iter()
                .map(|s| {
                    let log = s.with_extension("log");
                    format!(
                        "{}:\n{}\n",
                        log.display(),
                        std::fs::read_to_string(&log).unwrap_or_default()
                    )
                })
                .collect();
            panic!("the sites never got in sync\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[allow(clippy::too_many_arguments)]
fn drill_config(
    dir: &Path,
    socks: &[PathBuf],
    nbd: &[u16],
    fault: &str,
    out: &Path,
    name: &str,
) -> PathBuf {
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(
        &p,
        format!(
            "volume = 'vol0'\n\
             [[site]]\nname = 'a'\nsocket = '{}'\nnbd = '127.0.0.1:{}/vol0'\n\
             [[site]]\nname = 'b'\nsocket = '{}'\nnbd = '127.0.0.1:{}/vol0'\n\
             [fault]\n{fault}\n\
             [targets]\nmax_rto_s = 2.0\nmax_rpo_writes = 0\nmax_resync_s = 30\n\
             [report]\ndir = '{}'\nkey_file = '{}'\nhistory = '{}'\n\
             [load]\nblocks_per_writer = 128\nwrite_timeout_s = 3\n\
             [timing]\nbaseline_s = 1.5\nobserve_s = 1.0\nafter_s = 0.5\nresync_wait_s = 60\n",
            socks[0].display(),
            nbd[0],
            socks[1].display(),
            nbd[1],
            out.display(),
            dir.join("drill.key").display(),
            dir.join("history.jsonl").display(),
        ),
    )
    .unwrap();
    p
}

/// Run one drill; its report, checked for what every passing drill must show.
fn run_drill(config: &Path, kind: &str) -> Value {
    let o = ctl(&["drill", "run", &config.display().to_string()]);
    let out = text(&o);
    eprintln!("{out}");
    let json_path = out
        .lines()
        .find_map(|l| l.strip_prefix("report: "))
        .unwrap_or_else(|| panic!("no report path in:\n{out}"));
    let report: Value = serde_json::from_slice(&std::fs::read(json_path).unwrap()).unwrap();
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert_eq!(report["result"]["pass"], true, "{}", report["result"]);
    assert_eq!(report["kind"], kind);
    assert_eq!(report["schema"], "twinblk-drill/1");
    // RPO: 0, measured by reading every acknowledged write back.
    assert_eq!(report["rpo"]["display"], "0 (verified)");
    assert_eq!(report["rpo"]["verified"], true);
    assert_eq!(report["rpo"]["lost_writes"], 0);
    let rb = &report["rpo"]["readback_at_survivor"];
    assert_eq!(rb["complete"], true, "{rb}");
    assert!(rb["acked_writes"].as_u64().unwrap() > 100, "{rb}");
    for k in ["readback_after_resync", "readback_at_end"] {
        let rbs = report["rpo"][k].as_array().unwrap();
        assert_eq!(rbs.len(), 2, "{k}");
        assert!(rbs.iter().all(|r| r["complete"] == true), "{k}: {rbs:?}");
    }
    // RTO under the target, with its phases in order.
    let rto = report["rto"]["rto_s"].as_f64().unwrap();
    assert!(rto > 0.0 && rto < 2.0, "RTO {rto}");
    let ph = &report["rto"]["phases_s_after_fault"];
    let det = ph["detection"].as_f64().expect("detection seen");
    let dec = ph["witness_decision"]
        .as_f64()
        .expect("witness decision seen");
    let ack = ph["first_ack_at_survivor"].as_f64().unwrap();
    assert!(det <= dec && dec <= ack + 0.05, "{ph}");
    assert!(ph["latency_back_to_normal"].as_f64().is_some(), "{ph}");
    // Resync and replicas.
    assert_eq!(report["resync"]["measured"], true);
    assert!(
        report["resync"]["resync_bytes"].as_u64().unwrap() > 0,
        "{}",
        report["resync"]
    );
    assert_eq!(report["verify"]["identical"], true, "{}", report["verify"]);
    // Versions, config hash, witness decisions, a signature.
    for s in report["sites"].as_array().unwrap() {
        assert_eq!(s["version"], env!("CARGO_PKG_VERSION"), "{s}");
    }
    assert_eq!(report["config"]["sha256"].as_str().unwrap().len(), 64);
    assert!(
        report["witness_decisions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["last_answer"] == "granted"),
        "{}",
        report["witness_decisions"]
    );
    assert_eq!(report["signature"]["alg"], "HMAC-SHA256");
    report
}

/// Render the HTML report in headless Chromium: no console errors, and a screenshot.
fn chromium_renders(html: &Path, png: &Path, profile: &Path) {
    let run = |args: &[String]| -> Output {
        let mut child = Command::new("chromium")
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("chromium is not installed: run the README's test command (Debian's chromium package)");
        let t = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if t.elapsed() > Duration::from_secs(120) {
                let _ = child.kill();
                panic!("chromium did not finish within 120 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        child.wait_with_output().unwrap()
    };
    let url = format!("file://{}", html.display());
    let common = [
        "--headless".to_string(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        format!("--user-data-dir={}", profile.display()),
        "--enable-logging=stderr".into(),
        "--v=0".into(),
    ];
    let mut args = common.to_vec();
    args.extend(["--dump-dom".to_string(), url.clone()]);
    let o = run(&args);
    let dom = String::from_utf8_lossy(&o.stdout);
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(
        dom.contains("twinblk DR drill") && dom.contains("<svg"),
        "DOM:\n{dom}\n{log}"
    );
    let console: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE")).collect();
    assert!(
        console.is_empty(),
        "console messages:\n{}",
        console.join("\n")
    );
    let mut args = common.to_vec();
    args.extend([
        format!("--screenshot={}", png.display()),
        "--window-size=1200,900".into(),
        "--hide-scrollbars".into(),
        url,
    ]);
    let o = run(&args);
    let bytes = std::fs::read(png).unwrap_or_else(|e| panic!("no screenshot ({e}): {}", text(&o)));
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((w, h), (1200, 900));
    // A blank page of that size compresses to a few KiB; charts and tables do not.
    assert!(
        bytes.len() > 30_000,
        "screenshot of {} bytes: blank?",
        bytes.len()
    );
    let log = String::from_utf8_lossy(&o.stderr);
    let console: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE")).collect();
    assert!(
        console.is_empty(),
        "console messages:\n{}",
        console.join("\n")
    );
}

#[test]
fn drills_kill_and_cut_link_pass_with_rpo_zero_verified_and_signed_history() {
    use twinblk_tools::twinlink::{LinkSpec, Proxy, Shape, control::ControlServer};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("drill.key"), b"drill-hmac-key-0123456789abcdef").unwrap();
    let w = Witness::start(dir);
    let (ma, mb, na, nb) = (free_port(), free_port(), free_port(), free_port());
    // The mirror link through twinlink: a dials a2b (to b's mirror port), b dials b2a.
    let link = |name: &str, to: u16| LinkSpec {
        name: name.into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        target: format!("127.0.0.1:{to}").parse().unwrap(),
        udp: false,
    };
    let proxy = Arc::new(
        Proxy::start(
            &[
                (link("a2b", mb), [Shape::default(); 2]),
                (link("b2a", ma), [Shape::default(); 2]),
            ],
            16 << 20,
        )
        .unwrap(),
    );
    let tl_sock = dir.join("twinlink.sock");
    let _tl = ControlServer::start(&tl_sock, Arc::clone(&proxy)).unwrap();
    let (start_a, kill_a) = site(
        dir,
        "a",
        "b",
        ma,
        proxy.addr("a2b").unwrap(),
        na,
        w.addr,
        None,
    );
    let (start_b, _) = site(
        dir,
        "b",
        "a",
        mb,
        proxy.addr("b2a").unwrap(),
        nb,
        w.addr,
        None,
    );
    let _guard = Sites(vec![dir.join("a.pid"), dir.join("b.pid")]);
    sh(&start_a);
    sh(&start_b);
    let socks = vec![dir.join("a.sock"), dir.join("b.sock")];
    wait_in_sync(&socks, Duration::from_secs(30));
    let out = dir.join("reports");

    // 1. Kill site a (the leader and the witness's preferred site).
    let kill_cfg = drill_config(
        dir,
        &socks,
        &[na, nb],
        &format!(
            "kind = 'kill'\nsite = 'a'\nkill_command = \"{}\"\nrestart_command = \"{}\"",
            kill_a.replace('"', "\\\""),
            start_a.replace('"', "\\\"")
        ),
        &out,
        "kill",
    );
    let r1 = run_drill(&kill_cfg, "kill");
    assert_eq!(r1["survivor"], "b");
    // b was the follower: its path goes from non-optimised to optimised.
    assert_eq!(r1["rto"]["survivor_path_state"]["before"], "non_optimized");
    assert_eq!(r1["rto"]["survivor_path_state"]["after"], "optimized");
    assert!(
        r1["rto"]["phases_s_after_fault"]["path_state_change"]
            .as_f64()
            .is_some()
    );
    assert!(r1["trend"].as_array().unwrap().is_empty());
    wait_in_sync(&socks, Duration::from_secs(30));

    // 2. Cut only the inter-site link: the witness keeps a, b fences, and heals after.
    let cut_cfg = drill_config(
        dir,
        &socks,
        &[na, nb],
        &format!(
            "kind = 'cut-link'\nsite = 'b'\ntwinlink_control = '{}'\nlinks = ['a2b', 'b2a']",
            tl_sock.display()
        ),
        &out,
        "cut",
    );
    let r2 = run_drill(&cut_cfg, "cut-link");
    assert_eq!(r2["survivor"], "a");
    assert_eq!(r2["trend"].as_array().unwrap().len(), 1, "{}", r2["trend"]);
    assert_eq!(r2["trend"][0]["id"], r1["id"]);
    assert_eq!(r2["history"]["verified_before"], true);

    // The history verifies; a tampered line does not.
    let hist = dir.join("history.jsonl");
    let key = format!("--key={}", dir.join("drill.key").display());
    let o = ctl(&["drill", "verify-history", &hist.display().to_string(), &key]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("2 entries"), "{}", text(&o));
    let original = std::fs::read_to_string(&hist).unwrap();
    let tampered = dir.join("tampered.jsonl");
    let rto1 = format!("\"rto_s\":{}", r1["rto"]["rto_s"]);
    assert!(original.contains(&rto1), "{original}");
    std::fs::write(&tampered, original.replacen(&rto1, "\"rto_s\":0.001", 1)).unwrap();
    let o = ctl(&[
        "drill",
        "verify-history",
        &tampered.display().to_string(),
        &key,
    ]);
    assert_eq!(o.status.code(), Some(9), "{}", text(&o));
    assert!(
        text(&o).contains("line 1: the signature does not match"),
        "{}",
        text(&o)
    );
    // A line removed from the middle breaks the chain.
    let second_only: String = original.lines().skip(1).map(|l| format!("{l}\n")).collect();
    std::fs::write(&tampered, second_only).unwrap();
    let o = ctl(&[
        "drill",
        "verify-history",
        &tampered.display().to_string(),
        &key,
    ]);
    assert_eq!(o.status.code(), Some(9), "{}", text(&o));
    // The report's own signature, and a changed report.
    let rpath = r2["history"]["path"].as_str().unwrap().to_string();
    assert_eq!(rpath, hist.display().to_string());
    let reports: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert_eq!(reports.len(), 2);
    for p in &reports {
        let o = ctl(&["drill", "verify-report", &p.display().to_string(), &key]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    let changed = dir.join("changed.json");
    let t = std::fs::read_to_string(&reports[0]).unwrap();
    std::fs::write(&changed, t.replacen("\"pass\": true", "\"pass\": false", 1)).unwrap();
    let o = ctl(&[
        "drill",
        "verify-report",
        &changed.display().to_string(),
        &key,
    ]);
    assert_eq!(o.status.code(), Some(9), "{}", text(&o));

    // The HTML report (the second, with a trend) in headless Chromium.
    let html = out.join(format!("drill-{}.html", r2["id"].as_str().unwrap()));
    let png = dir.join("drill.png");
    chromium_renders(&html, &png, &dir.join("chromium-profile"));
    // Kept for a human to look at.
    let keep = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let _ = std::fs::copy(&png, keep.join("drill-report.png"));
    let _ = std::fs::copy(&html, keep.join("drill-report.html"));
    eprintln!("screenshot: {}", keep.join("drill-report.png").display());
}

#[test]
fn a_drill_refuses_a_bad_config_and_an_unreachable_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("drill.key"), b"drill-hmac-key-0123456789abcdef").unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "volume = 3\n").unwrap();
    let o = ctl(&["drill", "run", &bad.display().to_string()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = ctl(&[
        "drill",
        "run",
        &dir.join("missing.toml").display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let socks = vec![dir.join("a.sock"), dir.join("b.sock")];
    let cfg = drill_config(
        dir,
        &socks,
        &[1, 2],
        "kind = 'kill'\nsite = 'a'\nkill_command = 'true'\nrestart_command = 'true'",
        &dir.join("out"),
        "x",
    );
    let o = ctl(&["drill", "run", &cfg.display().to_string()]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(
        !dir.join("history.jsonl").exists(),
        "no drill ran, nothing recorded"
    );
}

/// The `twinblk` binary (the view's server), built into this build's target directory: the
/// tools crate's tests do not build the datapath's binaries by themselves.
fn twinblk_bin() -> PathBuf {
    let ctl = PathBuf::from(env!("CARGO_BIN_EXE_twinblk-ctl"));
    let profile_dir = ctl.parent().unwrap();
    let target = profile_dir.parent().unwrap();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args([
        "build",
        "-q",
        "-p",
        "twinblk-datapath",
        "--bin",
        "twinblk",
        "--target-dir",
    ])
    .arg(target);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let st = cmd.status().expect("cargo");
    assert!(st.success(), "building twinblk");
    let bin = profile_dir.join("twinblk");
    assert!(bin.is_file(), "{}", bin.display());
    bin
}

fn sandbox_config(
    dir: &Path,
    socks: &[PathBuf],
    nbd: &[u16],
    twinblk: &Path,
    point: &str,
    name: &str,
) -> PathBuf {
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(
        &p,
        format!(
            "volume = 'vol0'\n\
             [[site]]\nname = 'a'\nsocket = '{}'\nnbd = '127.0.0.1:{}/vol0'\n\
             [[site]]\nname = 'b'\nsocket = '{}'\nnbd = '127.0.0.1:{}/vol0'\n\
             [report]\ndir = '{}'\nkey_file = '{}'\nhistory = '{}'\n\
             [load]\nblocks_per_writer = 64\nwrite_timeout_s = 5\n\
             [sandbox]\nsite = 'b'\ntwinblk = '{}'\npoint = '{point}'\nbefore_s = 1.5\nafter_s = 0.5\n\
             max_view_open_s = 30\nmax_latency_factor = 1000\n",
            socks[0].display(),
            nbd[0],
            socks[1].display(),
            nbd[1],
            dir.join("reports").display(),
            dir.join("drill.key").display(),
            dir.join("history.jsonl").display(),
            twinblk.display(),
        ),
    )
    .unwrap();
    p
}

/// The non-disruptive drill on a cluster whose volume journals at both sites: a sandbox view
/// of site b's history at a bookmark taken under load holds every write acknowledged before
/// it and none sent after it; the sandbox takes writes; production is untouched. Opened at a
/// bookmark before the load instead, the same check finds the writes missing and the drill
/// fails with the "target missed" code. Both reports verify; the HTML renders.
#[test]
fn the_sandbox_drill_checks_a_cdp_view_against_the_load_and_fails_when_the_point_is_wrong() {
    let twinblk = twinblk_bin();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("drill.key"), b"drill-hmac-key-0123456789abcdef").unwrap();
    let w = Witness::start(dir);
    let (ma, mb, na, nb) = (free_port(), free_port(), free_port(), free_port());
    let (cdp_a, cdp_b) = (dir.join("cdp-a"), dir.join("cdp-b"));
    let a_to_b: SocketAddr = format!("127.0.0.1:{mb}").parse().unwrap();
    let b_to_a: SocketAddr = format!("127.0.0.1:{ma}").parse().unwrap();
    let (start_a, _) = site(dir, "a", "b", ma, a_to_b, na, w.addr, Some(&cdp_a));
    let (start_b, _) = site(dir, "b", "a", mb, b_to_a, nb, w.addr, Some(&cdp_b));
    let _guard = Sites(vec![dir.join("a.pid"), dir.join("b.pid")]);
    sh(&start_a);
    sh(&start_b);
    let socks = vec![dir.join("a.sock"), dir.join("b.sock")];
    wait_in_sync(&socks, Duration::from_secs(30));
    let key = format!("--key={}", dir.join("drill.key").display());

    // 1. The view at T: every write acknowledged before T, none sent after.
    let good = sandbox_config(dir, &socks, &[na, nb], &twinblk, "mid-load", "sandbox");
    let o = ctl(&["drill", "run", &good.display().to_string()]);
    let out = text(&o);
    eprintln!("{out}");
    assert_eq!(o.status.code(), Some(0), "{out}");
    let path = out
        .lines()
        .find_map(|l| l.strip_prefix("report: "))
        .unwrap();
    let r: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(r["kind"], "sandbox");
    assert_eq!(r["result"]["pass"], true, "{}", r["result"]);
    let sb = &r["sandbox"];
    let c = &sb["check"];
    assert_eq!(c["mismatches"], 0, "{c}");
    assert_eq!(c["complete"], true, "{c}");
    assert_eq!(c["blocks_checked"], c["blocks_expected"], "{c}");
    assert!(c["blocks_checked"].as_u64().unwrap() > 0, "{c}");
    assert!(c["writes_before"].as_u64().unwrap() > 10, "{c}");
    assert!(
        c["writes_after"].as_u64().unwrap() > 0,
        "the load ran past T: {c}"
    );
    assert_eq!(sb["sandbox_write"]["ok"], true, "{}", sb["sandbox_write"]);
    assert!(sb["view"]["open_s"].as_f64().unwrap() > 0.0);
    assert_eq!(sb["view"]["hold_released"], true);
    assert_eq!(sb["bookmarks_deleted"], true);
    assert_eq!(sb["production"]["lost_writes"], 0);
    assert!(sb["production"]["baseline_p50_us"].as_u64().is_some());
    assert!(sb["production"]["during_view_p50_us"].as_u64().is_some());
    let names: Vec<&str> = r["result"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "view_open",
            "view_content",
            "sandbox_write",
            "production",
            "view_discarded",
            "latency"
        ]
    );
    // The drill's bookmarks are gone; no hold is left in b's directory.
    let bm = twinblk_tools::ctl::call(
        &socks[1],
        "cdp_bookmarks",
        serde_json::json!({"volume": "vol0"}),
    )
    .unwrap();
    assert_eq!(bm[0]["bookmarks"], serde_json::json!({}), "{bm}");
    let holds = std::fs::read_dir(cdp_b.join("view-holds"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(holds, 0);
    let o = ctl(&["drill", "verify-report", path, &key]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let html = PathBuf::from(path).with_extension("html");
    let png = dir.join("sandbox.png");
    chromium_renders(&html, &png, &dir.join("chromium-profile"));
    let keep = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let _ = std::fs::copy(&png, keep.join("drill-sandbox-report.png"));
    let _ = std::fs::copy(&html, keep.join("drill-sandbox-report.html"));

    // 2. The view at a point before the load: the check must catch it.
    let wrong = sandbox_config(dir, &socks, &[na, nb], &twinblk, "before-load", "wrong");
    let o = ctl(&["drill", "run", &wrong.display().to_string()]);
    let out = text(&o);
    eprintln!("{out}");
    assert_eq!(o.status.code(), Some(8), "{out}");
    let path = out
        .lines()
        .find_map(|l| l.strip_prefix("report: "))
        .unwrap();
    let r: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(r["result"]["pass"], false);
    let c = &r["sandbox"]["check"];
    assert!(c["mismatches"].as_u64().unwrap() > 0, "{c}");
    let failed: Vec<&str> = r["result"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["pass"] != true)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["view_content"], "{}", r["result"]);
    assert_eq!(r["sandbox"]["bookmarks_deleted"], true);
    let o = ctl(&["drill", "verify-report", path, &key]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let hist = dir.join("history.jsonl").display().to_string();
    let o = ctl(&["drill", "verify-history", &hist, &key]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("2 entries"), "{}", text(&o));
}
