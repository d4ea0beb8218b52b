//! The Prometheus alert rules in deploy/prometheus/ are valid and behave as their unit tests
//! say (`promtool check rules`, `promtool test rules`; promtool comes with Debian's
//! `prometheus` package, installed by the README's test command). The metrics exposition itself
//! is linted by `promtool check metrics` in tests/ctl.rs, on a real two-site cluster, which
//! also checks that every metric the rules and the Grafana dashboard use is exported.

use std::path::PathBuf;
use std::process::Command;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir())
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool is not installed ({e}): run the README's test command, which installs Debian's prometheus package")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_alert_rules_are_valid_and_pass_their_unit_tests() {
    let t = promtool(&["check", "rules", "twinblk-alerts.yml"]);
    assert!(t.contains("SUCCESS: 12 rules found"), "{t}");
    let t = promtool(&["test", "rules", "twinblk-alerts.test.yml"]);
    assert!(t.contains("SUCCESS"), "{t}");
}

/// Every PromQL expression of the Grafana dashboard parses: each becomes a recording rule in a
/// scratch rules file that `promtool check rules` parses (template variables replaced).
#[test]
fn the_dashboards_queries_parse() {
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/twinblk-dashboard.json"),
    )
    .unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut n = 0;
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr").replace("$volume", ".*");
            n += 1;
            rules += &format!(
                "      - record: dashboard:q{n}\n        expr: {}\n",
                serde_json::to_string(&expr).unwrap()
            );
        }
    }
    assert!(n >= 10, "{n} queries");
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("dashboard-rules.yml");
    std::fs::write(&f, rules).unwrap();
    let t = promtool(&["check", "rules", f.to_str().unwrap()]);
    assert!(t.contains(&format!("SUCCESS: {n} rules found")), "{t}");
}
