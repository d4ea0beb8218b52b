//! The Prometheus alert rules in deploy/prometheus/ are valid and behave as their unit tests
//! say (`promtool check rules`, `promtool test rules`; promtool comes with Debian's
//! `prometheus` package, installed by the README's test command). The metrics exposition itself
//! is linted by `promtool check metrics` in tests/ctl.rs, on a real two-site cluster.

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
    assert!(t.contains("SUCCESS: 8 rules found"), "{t}");
    let t = promtool(&["test", "rules", "twinblk-alerts.test.yml"]);
    assert!(t.contains("SUCCESS"), "{t}");
}
