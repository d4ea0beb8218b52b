//! Text rendering of `twinblk-ctl status`: one screen, one block per volume group and volume,
//! one line per site. Everything shown comes from the [`Status`]; nothing is computed here
//! that the JSON output does not also carry.

use super::{Status, VolumeReport};
use serde_json::Value;
use std::fmt::Write;

/// Bytes as a short human figure (binary units).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn link(m: &Value) -> String {
    if m["link_up"] != true {
        return "down".into();
    }
    match m["rtt_p50_us"].as_f64() {
        Some(us) if us >= 1000.0 => format!("{:.2} ms", us / 1000.0),
        Some(us) => format!("{us:.0} µs"),
        None => "up".into(),
    }
}

fn resync(m: &Value) -> String {
    if m["resync_running"] != true {
        return "-".into();
    }
    let rate = bytes(m["resync_rate_bytes_per_s"].as_u64().unwrap_or(0));
    if m["resync_paused"] == true {
        // The rate is the average since the start and the time left follows from it: while
        // paused neither says when it ends.
        return format!("PAUSED (average {rate}/s so far)");
    }
    let mut s = format!(
        "{rate}/s, {:.1} s left",
        m["resync_eta_s"].as_f64().unwrap_or(0.0)
    );
    if let Some(l) = m["resync_rate_limit_bytes_per_s"].as_u64() {
        let _ = write!(s, ", limited to {}/s", bytes(l));
    }
    s
}

fn witness(m: &Value, site_name: &dyn Fn(u64) -> String) -> String {
    let w = &m["witness"];
    if w.is_null() {
        return "none".into();
    }
    let reach = match w["reachable"].as_bool() {
        Some(true) => "reachable",
        Some(false) => "UNREACHABLE",
        None => "not asked yet",
    };
    let holder = w["holder"]
        .as_u64()
        .map(site_name)
        .unwrap_or_else(|| "none".into());
    // A claim the witness has not recorded: another site claims the group too (check both
    // sites' configuration), or it has not reached the witness yet.
    let claim = if w["claim_recorded"].as_bool() == Some(false) {
        let other = w["preferred"]
            .as_u64()
            .map(site_name)
            .unwrap_or_else(|| "nobody".into());
        format!(", claims preference NOT RECORDED (witness prefers {other})")
    } else {
        String::new()
    };
    format!(
        "{reach}, holder {holder}, epoch {} (known {}), last answer {}{claim}",
        w["epoch"],
        w["known_epoch"],
        w["last_answer"].as_str().unwrap_or("-")
    )
}

fn volume(out: &mut String, v: &VolumeReport, site_name: &dyn Fn(u64) -> String) {
    let size = v.size.map(bytes).unwrap_or_default();
    let verdict = if v.in_sync { "in sync" } else { "NOT IN SYNC" };
    if !v.mirrored {
        let more = if v.in_sync { "" } else { "; problems below" };
        let _ = writeln!(out, "  volume {} ({size}): not mirrored{more}", v.volume);
        cdp_lines(out, v);
        return;
    }
    let _ = writeln!(out, "  volume {} ({size}): {verdict}", v.volume);
    let _ = writeln!(
        out,
        "    {:<8} {:<9} {:<10} {:<14} {:>9} {:>10} {:>10} {:>7}  resync",
        "site", "role", "state", "path", "link/rtt", "backlog", "dirty", "session"
    );
    for s in &v.sites {
        let m = &s.mirror;
        if m.is_null() {
            let _ = writeln!(out, "    {:<8} (no answer, or not mirrored there)", s.site);
            continue;
        }
        let _ = writeln!(
            out,
            "    {:<8} {:<9} {:<10} {:<14} {:>9} {:>10} {:>10} {:>7}  {}",
            s.site,
            m["role"].as_str().unwrap_or("?"),
            m["state"].as_str().unwrap_or("?"),
            m["path_state"].as_str().unwrap_or("?"),
            link(m),
            bytes(m["backlog_bytes"].as_u64().unwrap_or(0)),
            bytes(m["dirty_bytes"].as_u64().unwrap_or(0)),
            m["session"].as_u64().unwrap_or(0),
            resync(m),
        );
    }
    for s in &v.sites {
        if !s.mirror.is_null() {
            let _ = writeln!(
                out,
                "    witness seen by {}: {}",
                s.site,
                witness(&s.mirror, site_name)
            );
        }
        if !s.mirror.is_null() {
            let m = &s.mirror;
            let since = m["leader_since_unix_ms"]
                .as_u64()
                .map(|ms| {
                    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
                    format!(", since {}", humantime::format_rfc3339_seconds(t))
                })
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "    leadership at {}: {}, term {}, {}{since}{}",
                s.site,
                m["role"].as_str().unwrap_or("?"),
                m["leader_term"].as_u64().unwrap_or(0),
                m["leader_reason"].as_str().unwrap_or("?"),
                match (
                    m["switchover"].as_str(),
                    m["last_switchover_error"].as_str()
                ) {
                    (Some(p), _) => format!("; switchover under way ({p})"),
                    (None, Some(e)) => format!("; last switchover failed: {e}"),
                    _ => String::new(),
                }
            );
        }
        if let Some(f) = s.mirror["failure"].as_str() {
            let _ = writeln!(out, "    failure at {}: {f}", s.site);
        }
        if let Some(r) = s.mirror["session_refused"].as_str() {
            let _ = writeln!(out, "    session refused at {}: {r}", s.site);
        }
        if let Some(n) = s.mirror["local_errors"].as_u64().filter(|&n| n > 0) {
            let _ = writeln!(
                out,
                "    local device errors at {} (answered, still serving): {n}, last: {}",
                s.site,
                s.mirror["last_local_error"].as_str().unwrap_or("?")
            );
        }
        if let Some(n) = s.mirror["resync_unreadable_bytes"]
            .as_u64()
            .filter(|&n| n > 0)
        {
            let _ = writeln!(
                out,
                "    resync at {} cannot read {n} bytes of its replica (retried every 5 s; the peer stays out of sync until they are copied)",
                s.site
            );
        }
    }
    cdp_lines(out, v);
}

/// One line per site where the volume has a CDP journal.
fn cdp_lines(out: &mut String, v: &VolumeReport) {
    for s in v.sites.iter().filter(|s| !s.cdp.is_null()) {
        let c = &s.cdp;
        let mut what = format!("journal {}", c["journal"].as_str().unwrap_or("?"));
        if c["catching_up"] == true {
            what.push_str(", catching up");
        }
        if c["vouched"] == false {
            what.push_str(", not vouched for by the mirror");
        }
        if !c["rollback"].is_null() {
            what.push_str(", rollback not confirmed");
        }
        let _ = writeln!(out, "    CDP at {}: {what}", s.site);
    }
}

/// The status screen.
pub fn status(st: &Status) -> String {
    let mut out = String::new();
    let site_name = |id: u64| {
        st.sites
            .iter()
            .find(|s| s.site_id == Some(id))
            .map(|s| s.name.clone())
            .unwrap_or_else(|| format!("site id {id}"))
    };
    let verdict = if st.in_sync {
        "everything in sync".to_string()
    } else {
        format!("NOT IN SYNC ({} problem(s))", st.problems.len())
    };
    let _ = writeln!(out, "twinblk status: {verdict}");
    for s in &st.sites {
        if s.reachable {
            let _ = writeln!(
                out,
                "site {:<8} {}  twinblk {}  site id {}  witness {}",
                s.name,
                s.socket.display(),
                s.version.as_deref().unwrap_or("?"),
                s.site_id.map(|i| i.to_string()).unwrap_or("-".into()),
                s.witness.as_deref().unwrap_or("none"),
            );
        } else {
            let _ = writeln!(
                out,
                "site {:<8} {}  NOT ANSWERING: {}",
                s.name,
                s.socket.display(),
                s.error.as_deref().unwrap_or("?")
            );
        }
    }
    for g in &st.groups {
        let _ = writeln!(out);
        if g.group == "(local)" {
            let _ = writeln!(out, "unmirrored volumes");
        } else {
            let _ = writeln!(out, "group {}", g.group);
        }
        if let Some(r) = &g.witness_record {
            let _ = writeln!(
                out,
                "  witness state file: holder {}, epoch {}, preferred {}",
                r.holder
                    .map(|h| site_name(u64::from(h)))
                    .unwrap_or("none".into()),
                r.epoch,
                r.preferred
                    .map(|h| site_name(u64::from(h)))
                    .unwrap_or("unknown".into()),
            );
        }
        for v in &g.volumes {
            volume(&mut out, v, &site_name);
        }
    }
    if !st.problems.is_empty() {
        let _ = writeln!(out, "\nproblems:");
        for p in &st.problems {
            let _ = writeln!(out, "  - {p}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_figures() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(16 << 20), "16.0 MiB");
    }

    #[test]
    fn a_claim_the_witness_did_not_record_is_named_with_the_site_it_records() {
        let name = |id: u64| format!("site{id}");
        let m = |recorded: bool, preferred: Option<u64>| {
            serde_json::json!({"witness": {
                "reachable": true, "epoch": 3, "holder": null, "known_epoch": 3,
                "last_answer": "none", "preferred": preferred, "claims_preferred": true,
                "claim_recorded": recorded,
            }})
        };
        let line = witness(&m(false, Some(2)), &name);
        assert!(
            line.ends_with("claims preference NOT RECORDED (witness prefers site2)"),
            "{line}"
        );
        let line = witness(&m(false, None), &name);
        assert!(line.ends_with("(witness prefers nobody)"), "{line}");
        let line = witness(&m(true, Some(1)), &name);
        assert!(line.ends_with("last answer none"), "{line}");
    }
}
