//! `twinperf tune` against a real `twinblk serve` process on loopback (a small RAM volume, two
//! reactors): the table covers every point of the grid asked, the recommendation names a
//! measured point, every figure is above zero, and the wait policy found at the start is back
//! afterwards (read through the control socket). Also refusals that must change nothing.
//! No assertion on timing or on which point wins: this machine's numbers are noise.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `twinblk` binary, built into this build's target directory (the tools crate's tests
/// do not build the datapath's binaries by themselves).
fn twinblk_bin() -> PathBuf {
    let perf = PathBuf::from(env!("CARGO_BIN_EXE_twinperf"));
    let profile_dir = perf.parent().unwrap();
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
    assert!(cmd.status().expect("cargo").success(), "building twinblk");
    profile_dir.join("twinblk")
}

/// A `twinblk serve` child (killed by PID when dropped) and its NBD URI and control socket.
struct Serve {
    child: Child,
    uri: String,
    sock: PathBuf,
}

impl Serve {
    fn start(dir: &Path) -> Serve {
        let sock = dir.join("ctl.sock");
        let cfg = dir.join("twinblk.toml");
        std::fs::write(
            &cfg,
            format!(
                "[reactor]\ncores=[0,1]\nwait='adaptive'\nspin_us=40\npin=false\n\
                 [nbd]\nlisten=['127.0.0.1:0']\n[nvmf]\nlisten=[]\n\
                 [control]\nsocket='{}'\n\
                 [[volume]]\nname='vol0'\nbackend='malloc'\nsize='32MiB'\n",
                sock.display()
            ),
        )
        .unwrap();
        let mut child = Command::new(twinblk_bin())
            .args(["serve", "--config"])
            .arg(&cfg)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("twinblk serve starts");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(rest) = line.trim().strip_prefix("nbd://") {
                    let _ = tx.send(format!("nbd://{rest}"));
                }
            }
        });
        let uri = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("twinblk serve printed its NBD endpoint");
        assert!(uri.starts_with("nbd://127.0.0.1:"), "{uri}");
        Serve { child, uri, sock }
    }

    fn call(&self, method: &str, params: Value) -> Value {
        twinblk_tools::ctl::call(&self.sock, method, params).expect("control call")
    }

    /// (wait, spin_us) per reactor.
    fn waits(&self) -> Vec<(Value, Value)> {
        self.call("reactor_stats", Value::Null)
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["wait"].clone(), r["spin_us"].clone()))
            .collect()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn twinperf(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_twinperf"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("twinperf runs");
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "twinperf {args:?} hung:\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn positive(p: &Value, k: &str) {
    let v = p[k].as_f64().unwrap_or(-1.0);
    assert!(v > 0.0, "{k} = {} in {p}", p[k]);
}

#[test]
fn tune_sweeps_the_grid_recommends_a_measured_point_and_restores_the_wait_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = Serve::start(tmp.path());
    // Not the configured policy: tune must put back what it finds, not the config.
    srv.call("reactor_set_wait", json!({"wait": "poll", "reactor": 1}));
    let found = srv.waits();
    assert_eq!(found[0], (json!("adaptive"), json!(40)));
    assert_eq!(found[1], (json!("poll"), Value::Null));

    let sock = srv.sock.display().to_string();
    let o = twinperf(
        &[
            "tune",
            &srv.uri,
            "--control",
            &sock,
            "--budget",
            "4",
            "--waits",
            "interrupt,adaptive",
            "--queues",
            "1,2",
            "--depths",
            "1,8",
            "--rw",
            "randwrite",
            "--json",
        ],
        Duration::from_secs(120),
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    let r: Value = serde_json::from_slice(&o.stdout).expect("JSON report");
    assert_eq!(r["mode"], "tune");
    assert_eq!(r["complete"], true);
    assert_eq!(r["reactors"], 2);
    assert_eq!(
        r["cpu_source"], "proc",
        "the daemon runs here: /proc of its pid"
    );
    assert!(
        r["server_pid"].as_u64().unwrap() == u64::from(srv.child.id()),
        "{}",
        r["server_pid"]
    );
    // The table covers the grid, in sweep order.
    let pts = r["points"].as_array().unwrap();
    let mut want = Vec::new();
    for w in ["interrupt", "adaptive"] {
        for q in [1, 2] {
            for d in [1, 8] {
                want.push((w.to_string(), q, d));
            }
        }
    }
    let got: Vec<_> = pts
        .iter()
        .map(|p| {
            (
                p["wait"].as_str().unwrap().to_string(),
                p["queues"].as_u64().unwrap(),
                p["depth"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, want);
    for p in pts {
        for k in [
            "iops",
            "p50_us",
            "p99_us",
            "cpu_us_per_io",
            "reactor_cpu_us_per_io",
            "seconds",
            "warmup_s",
            "ios",
            "server_ios",
        ] {
            positive(p, k);
        }
        assert_eq!(p["errors"], 0, "{p}");
        let used = p["reactors_used"].as_u64().unwrap();
        assert!((1..=2).contains(&used), "{p}");
        if p["queues"] == 1 {
            assert_eq!(used, 1, "one connection runs on one reactor: {p}");
        }
    }
    // The recommendation is one of the measured points, named as such.
    let rec = &r["recommendation"];
    let i = rec["index"].as_u64().unwrap() as usize;
    assert!(i < pts.len());
    assert_eq!(rec["point"], pts[i]);
    let reason = rec["reason"].as_str().unwrap();
    let named = format!(
        "wait={}, {} queue{}, depth {}:",
        pts[i]["wait"].as_str().unwrap(),
        pts[i]["queues"],
        if pts[i]["queues"] == 1 { "" } else { "s" },
        pts[i]["depth"]
    );
    assert!(
        reason.starts_with(&named),
        "{reason:?} does not name {named:?}"
    );
    positive(rec, "iops_ratio");
    assert!(rec["iops_ratio"].as_f64().unwrap() <= 1.0);
    // Put back exactly as found, reactor by reactor.
    assert_eq!(r["restored"], true);
    assert_eq!(srv.waits(), found, "the wait policy was not restored");

    // The text form: a header, one row per point, the recommendation.
    let o = twinperf(
        &[
            "tune",
            &srv.uri,
            "--control",
            &sock,
            "--budget",
            "1",
            "--waits",
            "poll",
            "--queues",
            "2",
            "--depths",
            "4",
        ],
        Duration::from_secs(60),
    );
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(text.contains("\npoll            2     4 "), "{text}");
    assert!(text.contains("<- recommended"), "{text}");
    assert!(
        text.contains("recommendation: wait=poll, 2 queues, depth 4:"),
        "{text}"
    );
    assert!(text.contains("restored to what was found"), "{text}");
    assert_eq!(srv.waits(), found);
}

#[test]
fn tune_refuses_bad_grids_and_a_short_budget_without_touching_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = Serve::start(tmp.path());
    let found = srv.waits();
    let sock = srv.sock.display().to_string();
    for (args, needle) in [
        (vec!["--budget", "1"], "too short for 36 points"),
        (vec!["--waits", "busy"], "unknown wait policy"),
        (vec!["--depths", "0"], "depths must be"),
        (vec!["--queues", "0"], "queue counts must be"),
    ] {
        let mut a = vec!["tune", srv.uri.as_str(), "--control", sock.as_str()];
        a.extend(args.iter().copied());
        let o = twinperf(&a, Duration::from_secs(60));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{a:?}: {err}");
        assert!(err.contains(needle), "{a:?}: {err}");
        assert_eq!(srv.waits(), found, "{a:?} changed the wait policy");
    }
    // A socket that is not there: a clear error, no sweep.
    let o = twinperf(
        &[
            "tune",
            &srv.uri,
            "--control",
            "/nonexistent/ctl.sock",
            "--budget",
            "30",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot reach the control socket"));
}
