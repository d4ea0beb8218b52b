//! `twinblk-ctl cdp`: the continuous data protection methods of a site's control socket
//! (`cdp_status`, `cdp_bookmark`, `cdp_bookmarks`, `cdp_bookmark_delete`, `cdp_enable`,
//! `cdp_disable`, the views and restores; docs/control.md) as
//! commands with readable output: each journal's restorable window in UTC, its history
//! against the retention target, and bookmarks by name and time.
//!
//! Model: every command is one call to one site (CDP is per site: each journals what it
//! applies); nothing is cached. Times are the site's clock in ns since the epoch, printed as
//! UTC and as the number `twinblk cdp restore --time` and `twinblk cdp view --time` take.

use super::CallError;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::path::Path;

/// Which journals a bookmark command names.
pub enum Target<'a> {
    /// One volume.
    Volume(&'a str),
    /// Every volume of a group (one time for all).
    Group(&'a str),
}

impl Target<'_> {
    fn params(&self) -> Value {
        match self {
            Target::Volume(v) => json!({"volume": v}),
            Target::Group(g) => json!({"group": g}),
        }
    }
}

/// `cdp_status`, of one volume or of all.
pub fn status(socket: &Path, volume: Option<&str>) -> Result<Value, CallError> {
    let all = super::call(socket, "cdp_status", Value::Null)?;
    Ok(match volume {
        None => all,
        Some(v) => Value::Array(
            all.as_array()
                .into_iter()
                .flatten()
                .filter(|j| j["volume"] == v)
                .cloned()
                .collect(),
        ),
    })
}

/// Set bookmark `name` now on `target` (moving one of that name only when `replace`).
pub fn bookmark(
    socket: &Path,
    target: &Target<'_>,
    name: &str,
    replace: bool,
) -> Result<Value, CallError> {
    let mut p = target.params();
    p["name"] = json!(name);
    if replace {
        p["replace"] = json!(true);
    }
    super::call(socket, "cdp_bookmark", p)
}

/// Delete bookmark `name` on `target`.
pub fn unbookmark(socket: &Path, target: &Target<'_>, name: &str) -> Result<Value, CallError> {
    let mut p = target.params();
    p["name"] = json!(name);
    super::call(socket, "cdp_bookmark_delete", p)
}

/// The bookmarks of `target`.
pub fn bookmarks(socket: &Path, target: &Target<'_>) -> Result<Value, CallError> {
    super::call(socket, "cdp_bookmarks", target.params())
}

/// `ns` since the epoch as RFC 3339 UTC with milliseconds (`2026-12-03T15:20:00.123Z`).
pub fn utc(ns: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns);
    humantime::format_rfc3339_millis(t).to_string()
}

fn hours(s: f64) -> String {
    if s < 3600.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

/// `cdp_status` as text.
pub fn render_status(st: &Value) -> String {
    let mut o = String::new();
    let list = st.as_array().map(Vec::as_slice).unwrap_or(&[]);
    if list.is_empty() {
        o.push_str("no volume with continuous data protection here\n");
    }
    for j in list {
        let n = |k: &str| j[k].as_u64().unwrap_or(0);
        let _ = writeln!(
            o,
            "{} (group {}): journal {}, directory {}",
            j["volume"].as_str().unwrap_or("?"),
            j["group"].as_str().unwrap_or("?"),
            j["journal"].as_str().unwrap_or("?"),
            j["dir"].as_str().unwrap_or("?")
        );
        let _ = writeln!(
            o,
            "  window  {} .. {}  (--time {} .. {})",
            utc(n("window_start_ns")),
            utc(n("window_end_ns")),
            n("window_start_ns"),
            n("window_end_ns")
        );
        let history = j["history_s"].as_f64().unwrap_or(0.0);
        let target = j["history_target_s"]
            .as_f64()
            .map_or("none".to_string(), hours);
        let _ = writeln!(
            o,
            "  history {} (target {target}){}",
            hours(history),
            if j["history_short"] == true {
                "  SHORT: retention_bytes consolidated records younger than retention_age"
            } else {
                ""
            }
        );
        let _ = writeln!(
            o,
            "  records {}, last sequence {}, journal bytes {}, segment {}",
            n("records"),
            n("durable_seq"),
            n("journal_bytes"),
            n("segment")
        );
        if let Some(r) = j["rollback"].as_str() {
            let _ = writeln!(o, "  ROLLBACK {r}");
        }
        if let Some(d) = j["degraded_note"].as_str() {
            let _ = writeln!(o, "  DEGRADED {d}");
        }
        if j["catching_up"] == true {
            let _ = writeln!(
                o,
                "  CATCHING UP switched on at run time: the volume is journaled again; points after the history's earlier end are refused until it is whole"
            );
        }
        if j["vouched"] == false {
            let _ = writeln!(
                o,
                "  NOT VOUCHED the mirror does not vouch for this site's replica (no read lease, fenced, resynced): points after sequence {} are refused until it does",
                j["whole_until_seq"]
            );
        }
    }
    o
}

/// `cdp_view_open`'s answer as text: where the view serves.
pub fn render_view(v: &Value) -> String {
    let mut o = format!(
        "view {} of {} serving (pid {}, opened in {:.3} s); stop it with `twinblk-ctl cdp close {}`\n",
        v["id"],
        v["volume"].as_str().unwrap_or("?"),
        v["pid"],
        v["opened_s"].as_f64().unwrap_or(0.0),
        v["id"]
    );
    match v["volumes"].as_array() {
        // A group's view: every volume at the same moment, each under its own name.
        Some(list) => {
            if let Some(t) = v["time_ns"].as_u64() {
                let _ = writeln!(o, "  at {} (--time {t}) for every volume", utc(t));
            }
            for e in list {
                let _ = writeln!(o, "  {}:", e["volume"].as_str().unwrap_or("?"));
                endpoints(&mut o, e, "    ");
            }
        }
        None => endpoints(&mut o, v, "  "),
    }
    o
}

/// One view volume's addresses, one line per front end.
fn endpoints(o: &mut String, v: &Value, indent: &str) {
    if let Some(u) = v["nbd"].as_str() {
        let _ = writeln!(o, "{indent}NBD      {u}");
    }
    if v["nvmf"].is_object() {
        let _ = writeln!(
            o,
            "{indent}NVMe/TCP {} {}",
            v["nvmf"]["addr"].as_str().unwrap_or("?"),
            v["nvmf"]["nqn"].as_str().unwrap_or("?")
        );
    }
    if v["iscsi"].is_object() {
        let _ = writeln!(
            o,
            "{indent}iSCSI    {} {}",
            v["iscsi"]["addr"].as_str().unwrap_or("?"),
            v["iscsi"]["iqn"].as_str().unwrap_or("?")
        );
    }
}

/// Run `f` (the `cdp_enable` call for `volume` at `socket`, which answers once the catch-up
/// is done or its wait ran out: minutes on a large volume) and print its progress on stderr
/// meanwhile, every second from the first on: `cdp_status`'s `catch_up_bytes` of the
/// volume's size (one line rewritten on a terminal, a line each otherwise). A reading that
/// fails is skipped: the answer of `f` says what happened.
pub fn with_enable_progress<T>(socket: &Path, volume: &str, f: impl FnOnce() -> T) -> T {
    use std::io::{IsTerminal, Write as _};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};
    let done = AtomicBool::new(false);
    let tty = std::io::stderr().is_terminal();
    std::thread::scope(|sc| {
        sc.spawn(|| {
            let start = Instant::now();
            let mut next = start + Duration::from_secs(1);
            let mut size: Option<u64> = None;
            let mut printed = false;
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
                if Instant::now() < next || done.load(Ordering::SeqCst) {
                    continue;
                }
                next += Duration::from_secs(1);
                if size.is_none() {
                    size = super::call(socket, "volume_list", Value::Null)
                        .ok()
                        .and_then(|l| {
                            l.as_array()?
                                .iter()
                                .find(|v| v["name"] == volume)?["size"]
                                .as_u64()
                        });
                }
                let Ok(st) = super::call(socket, "cdp_status", Value::Null) else {
                    continue;
                };
                let Some(c) = st
                    .as_array()
                    .and_then(|a| a.iter().find(|c| c["volume"] == volume))
                else {
                    continue;
                };
                let hb = |b: u64| super::verify::human_bytes(b as f64);
                let secs = start.elapsed().as_secs();
                let what = match (c["catch_up_bytes"].as_u64(), size) {
                    (Some(b), Some(s)) if b >= s && c["catching_up"] == true => format!(
                        "journaled again ({}); waiting for the mirror to vouch for this site's replica",
                        hb(s)
                    ),
                    (Some(b), Some(s)) if s > 0 => format!(
                        "journaling the volume again: {} of {} ({}%)",
                        hb(b),
                        hb(s),
                        b.saturating_mul(100) / s
                    ),
                    (Some(b), _) => format!("journaling the volume again: {}", hb(b)),
                    (None, _) => "starting".to_string(),
                };
                let line = format!("cdp enable {volume}: {what}, {secs} s");
                let mut e = std::io::stderr();
                let _ = if tty {
                    write!(e, "\r{line}\x1b[K")
                } else {
                    writeln!(e, "{line}")
                };
                printed = true;
            }
            if tty && printed {
                eprintln!();
            }
        });
        let r = f();
        done.store(true, Ordering::SeqCst);
        r
    })
}

/// `cdp_enable`'s answer as text: from where the history is whole.
pub fn render_enable(v: &Value) -> String {
    let mut o = format!(
        "CDP on for {} (directory {}, group {}, home reactor {})\n",
        v["volume"].as_str().unwrap_or("?"),
        v["dir"].as_str().unwrap_or("?"),
        v["group"].as_str().unwrap_or("?"),
        v["home_reactor"]
    );
    if v["catching_up"] == true {
        let _ = writeln!(o, "  CATCHING UP {}", v["note"].as_str().unwrap_or(""));
    } else {
        let t = v["whole_from_ns"].as_u64().unwrap_or(0);
        let _ = writeln!(
            o,
            "  restorable from sequence {} at {} (--time {t})",
            v["gap_seq"],
            utc(t)
        );
        if v["new_history"] == false {
            let a = v["whole_until_ns"].as_u64().unwrap_or(0);
            let _ = writeln!(
                o,
                "  and up to sequence {} at {} (--time {a}); points in between are refused",
                v["whole_until_seq"],
                utc(a)
            );
        }
    }
    let _ = writeln!(o, "  lasts {}", v["lasts"].as_str().unwrap_or("?"));
    o
}

/// `cdp_disable`'s answer as text: where the history ends.
pub fn render_disable(v: &Value) -> String {
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    let mut o = format!(
        "CDP off for {}: its history ends at sequence {}, {} (--time {}), window from {}; it stays readable (cdp view, cdp restore)\n",
        v["volume"].as_str().unwrap_or("?"),
        n("last_seq"),
        utc(n("window_end_ns")),
        n("window_end_ns"),
        utc(n("window_start_ns")),
    );
    // Whole only up to an earlier point: say what is refused.
    if let Some(w) = v["whole_until_seq"].as_u64().filter(|&w| w < n("last_seq")) {
        let _ = writeln!(
            o,
            "  NOT WHOLE after sequence {w}: {}",
            v["note"].as_str().unwrap_or("")
        );
    }
    let _ = writeln!(o, "  lasts {}", v["lasts"].as_str().unwrap_or("?"));
    o
}

/// `cdp_jobs` as text: one line per view or restore.
pub fn render_jobs(v: &Value) -> String {
    let list = v.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return "no view or restore started through this daemon\n".into();
    }
    let mut o = String::new();
    for j in list {
        let _ = writeln!(
            o,
            "{:>3} {:<7} {:<12} {:<16} pid {:<7} {:>8.1} s  {}",
            j["id"],
            j["kind"].as_str().unwrap_or("?"),
            j["volume"].as_str().unwrap_or("?"),
            j["state"].as_str().unwrap_or("?"),
            j["pid"],
            j["elapsed_s"].as_f64().unwrap_or(0.0),
            j["last_line"].as_str().unwrap_or("")
        );
    }
    o
}

/// `cdp_bookmarks` as text: one line per bookmark per volume.
pub fn render_bookmarks(b: &Value) -> String {
    let mut o = String::new();
    for v in b.as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let name = v["volume"].as_str().unwrap_or("?");
        let marks = v["bookmarks"].as_object();
        if marks.is_none_or(|m| m.is_empty()) {
            let _ = writeln!(o, "{name}: no bookmark");
        }
        for (k, t) in marks.into_iter().flatten() {
            let t = t.as_u64().unwrap_or(0);
            let _ = writeln!(o, "{name}: {k}  {}  (--time {t})", utc(t));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_are_rfc3339() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(951_782_400_000_000_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn status_and_bookmarks_render_every_field_they_name() {
        let st = json!([{"volume": "db", "group": "g", "journal": "running", "dir": "/j",
            "window_start_ns": 0u64, "window_end_ns": 3_600_000_000_000u64, "history_s": 3600.0,
            "history_target_s": 7200.0, "history_short": true, "records": 5, "durable_seq": 5,
            "journal_bytes": 4096, "segment": 1}]);
        let t = render_status(&st);
        assert!(t.contains("db (group g): journal running"), "{t}");
        assert!(!t.contains("DEGRADED"), "{t}");
        assert!(t.contains("history 1.0 h (target 2.0 h)  SHORT"), "{t}");
        assert!(t.contains("--time 0 .. 3600000000000"), "{t}");
        let st2 = json!([{"volume": "db", "group": "g", "journal": "degraded", "dir": "/j",
            "degraded_note": "the journal stopped after sequence 9"}]);
        let t2 = render_status(&st2);
        assert!(
            t2.contains("journal degraded")
                && t2.contains("DEGRADED the journal stopped after sequence 9"),
            "{t2}"
        );
        assert!(!t2.contains("NOT VOUCHED"), "{t2}");
        let st3 = json!([{"volume": "db", "group": "g", "journal": "running", "dir": "/j",
            "vouched": false, "whole_until_seq": 41}]);
        let t3 = render_status(&st3);
        assert!(
            t3.contains("NOT VOUCHED") && t3.contains("after sequence 41 are refused"),
            "{t3}"
        );
        assert!(render_status(&json!([])).contains("no volume"));
        let b = json!([{"volume": "db", "bookmarks": {"before-upgrade": 5u64}}, {"volume": "x", "bookmarks": {}}]);
        let t = render_bookmarks(&b);
        assert!(
            t.contains("db: before-upgrade  1970-01-01T00:00:00.000Z  (--time 5)"),
            "{t}"
        );
        assert!(t.contains("x: no bookmark"), "{t}");
    }

    #[test]
    fn enable_and_disable_render_the_history_ends() {
        let v = json!({"volume": "db", "dir": "/j", "group": "g", "home_reactor": 0,
            "new_history": false, "whole_until_seq": 7, "whole_until_ns": 5u64, "gap_seq": 99,
            "whole_from_ns": 6u64, "catching_up": false, "lasts": "until the daemon stops"});
        let t = render_enable(&v);
        assert!(t.contains("CDP on for db (directory /j, group g"), "{t}");
        assert!(t.contains("restorable from sequence 99"), "{t}");
        assert!(
            t.contains("up to sequence 7") && t.contains("(--time 5)"),
            "{t}"
        );
        assert!(t.contains("lasts until the daemon stops"), "{t}");
        let d = json!({"volume": "db", "last_seq": 9, "window_end_ns": 8u64,
            "window_start_ns": 1u64, "lasts": "until the daemon stops"});
        let t = render_disable(&d);
        assert!(
            t.contains("CDP off for db: its history ends at sequence 9"),
            "{t}"
        );
        assert!(t.contains("(--time 8)"), "{t}");
        assert!(!t.contains("NOT WHOLE"), "{t}");
        let d = json!({"volume": "db", "last_seq": 9, "whole_until_seq": 0, "window_end_ns": 8u64,
            "window_start_ns": 1u64, "note": "never whole", "lasts": "until the daemon stops"});
        let t = render_disable(&d);
        assert!(t.contains("NOT WHOLE after sequence 0: never whole"), "{t}");
    }

    #[test]
    fn a_group_view_lists_every_volume_with_its_addresses() {
        let v = json!({"id": 3, "pid": 9, "volume": "group g", "opened_s": 0.5, "group": "g",
            "time_ns": 5u64, "volumes": [
                {"volume": "a", "nbd": "nbd://127.0.0.1:9/a", "nvmf": null, "iscsi": null},
                {"volume": "b", "nbd": "nbd://127.0.0.1:9/b", "nvmf": {"addr": "127.0.0.1:8", "nqn": "nqn.x:b"}, "iscsi": null}]});
        let t = render_view(&v);
        assert!(t.contains("view 3 of group g serving"), "{t}");
        assert!(t.contains("(--time 5) for every volume"), "{t}");
        assert!(
            t.contains("  a:\n    NBD      nbd://127.0.0.1:9/a\n"),
            "{t}"
        );
        assert!(t.contains("    NVMe/TCP 127.0.0.1:8 nqn.x:b"), "{t}");
    }
}
