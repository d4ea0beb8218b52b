//! The drill report as one self-contained HTML page: inline CSS and SVG only (no script, no
//! external resource), so it renders anywhere, offline, and shows the same facts as the JSON.
//!
//! Model: rendered from the signed JSON report (never from the drill's internal state), so the
//! page cannot say anything the signed report does not. Two charts: a timeline (one lane per
//! site with its mirror state over time, the drill's phases as vertical markers) and the
//! production latency (median and maximum per time bucket of the drill's writes, log scale,
//! against the baseline median and the "back to normal" threshold).
//!
//! Invariant: every text taken from the report is HTML-escaped ([`esc`]).

use serde_json::Value;
use std::fmt::Write;

/// Escape `s` for HTML text and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A JSON value as short text.
fn txt(v: &Value) -> String {
    match v {
        Value::Null => "—".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.3}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

const W: f64 = 1100.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 20.0;

fn state_color(s: &str) -> &'static str {
    match s {
        "up" => "#3a9d5d",
        "survivor" => "#e0a526",
        "resyncing" => "#4a7fd6",
        "fenced" | "failed" | "diverged" => "#c8413b",
        "unreachable" => "#888888",
        _ => "#b07cc6",
    }
}

/// Render the report.
pub fn render(r: &Value) -> String {
    let mut h = String::new();
    let pass = r["result"]["pass"] == true;
    let title = format!(
        "twinblk DR drill {} — {}",
        txt(&r["id"]),
        if pass { "PASS" } else { "FAIL" }
    );
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\
         <link rel=\"icon\" href=\"data:,\"><style>\
         body{{font-family:sans-serif;margin:24px;color:#222;max-width:1160px}}\
         table{{border-collapse:collapse;margin:8px 0 16px}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:14px}}\
         th{{background:#f0f0f0}}.pass{{color:#fff;background:#2e7d32;padding:2px 10px;border-radius:4px}}\
         .fail{{color:#fff;background:#c62828;padding:2px 10px;border-radius:4px}}code{{font-size:13px}}\
         svg{{border:1px solid #ddd;background:#fff}}</style></head><body>\n",
        esc(&title)
    );
    let _ = writeln!(
        h,
        "<h1>twinblk DR drill <span class=\"{}\">{}</span></h1>",
        if pass { "pass" } else { "fail" },
        if pass { "PASS" } else { "FAIL" }
    );
    let _ = writeln!(
        h,
        "<p>Drill <code>{}</code>, started {} · fault <b>{}</b> of site <b>{}</b>, survivor <b>{}</b> · volume <code>{}</code></p>",
        esc(&txt(&r["id"])),
        esc(&txt(&r["started_utc"])),
        esc(&txt(&r["kind"])),
        esc(&txt(&r["failed_site"])),
        esc(&txt(&r["survivor"])),
        esc(&txt(&r["volume"]))
    );
    // Targets.
    h.push_str("<h2>Targets</h2><table><tr><th>check</th><th>target</th><th>measured</th><th>result</th></tr>\n");
    for c in r["result"]["checks"].as_array().into_iter().flatten() {
        let ok = c["pass"] == true;
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><span class=\"{}\">{}</span></td></tr>",
            esc(&txt(&c["name"])),
            esc(&txt(&c["target"])),
            esc(&txt(&c["measured"])),
            if ok { "pass" } else { "fail" },
            if ok { "pass" } else { "fail" }
        );
    }
    h.push_str("</table>\n");
    // Phases.
    h.push_str("<h2>Recovery phases (seconds after the fault)</h2><table><tr><th>phase</th><th>s</th></tr>\n");
    for (k, label) in [
        ("fault_injected", "fault injected"),
        (
            "detection",
            "detection (survivor's link, state or path changes)",
        ),
        ("witness_decision", "witness decision (survivor granted)"),
        ("path_state_change", "survivor's path state first changes"),
        ("path_state_settled", "survivor's path state settles"),
        (
            "first_ack_at_survivor",
            "first write acknowledged at the survivor (RTO)",
        ),
        ("latency_back_to_normal", "latency back to normal"),
    ] {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td></tr>",
            label,
            esc(&txt(&r["rto"]["phases_s_after_fault"][k]))
        );
    }
    let _ = writeln!(
        h,
        "</table><p>Survivor's path state: {} → {} (polled every {} ms).</p>",
        esc(&txt(&r["rto"]["survivor_path_state"]["before"])),
        esc(&txt(&r["rto"]["survivor_path_state"]["after"])),
        esc(&txt(&r["rto"]["poll_interval_ms"]))
    );
    h.push_str("<h2>Timeline</h2>\n");
    timeline(&mut h, r);
    h.push_str("<h2>Production latency during the drill</h2>\n");
    latency(&mut h, r);
    // RPO, resync, verify.
    let _ = writeln!(
        h,
        "<h2>Data</h2><table><tr><th>RPO</th><td>{}</td></tr><tr><th>lost writes / bytes / seconds</th><td>{} / {} / {}</td></tr>\
         <tr><th>resync</th><td>{} s, {} bytes</td></tr><tr><th>replicas</th><td>{} ({} regions compared)</td></tr></table>",
        esc(&txt(&r["rpo"]["display"])),
        esc(&txt(&r["rpo"]["lost_writes"])),
        esc(&txt(&r["rpo"]["lost_bytes"])),
        esc(&txt(&r["rpo"]["lost_seconds"])),
        esc(&txt(&r["resync"]["resync_s"])),
        esc(&txt(&r["resync"]["resync_bytes"])),
        if r["verify"]["identical"] == true {
            "identical"
        } else {
            "NOT identical"
        },
        esc(&txt(&r["verify"]["regions_compared"]))
    );
    // Witness.
    h.push_str("<h2>The witness's decisions (as each site heard them)</h2><table><tr><th>t (s)</th><th>seen by</th><th>holder</th><th>epoch</th><th>last answer</th><th>state</th></tr>\n");
    for d in r["witness_decisions"].as_array().into_iter().flatten() {
        let _ = writeln!(
            h,
            "<tr><td>{:.3}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            d["t_us"].as_f64().unwrap_or(0.0) / 1e6,
            esc(&txt(&d["seen_by"])),
            esc(&txt(&d["holder"])),
            esc(&txt(&d["epoch"])),
            esc(&txt(&d["last_answer"])),
            esc(&txt(&d["state"]))
        );
    }
    h.push_str("</table>\n");
    // Trend.
    h.push_str("<h2>Trend (earlier drills)</h2>\n");
    trend(&mut h, r);
    // Software.
    h.push_str("<h2>Software and configuration</h2><table><tr><th>site</th><th>version</th><th>site id</th><th>control socket</th></tr>\n");
    for s in r["sites"].as_array().into_iter().flatten() {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            esc(&txt(&s["name"])),
            esc(&txt(&s["version"])),
            esc(&txt(&s["site_id"])),
            esc(&txt(&s["socket"]))
        );
    }
    let _ = writeln!(
        h,
        "</table><p>Tool {} {} · config <code>{}</code> SHA-256 <code>{}</code></p>",
        esc(&txt(&r["tool"]["name"])),
        esc(&txt(&r["tool"]["version"])),
        esc(&txt(&r["config"]["path"])),
        esc(&txt(&r["config"]["sha256"]))
    );
    // Events.
    h.push_str("<h2>Events</h2><table><tr><th>t (s)</th><th>event</th></tr>\n");
    for e in r["events"].as_array().into_iter().flatten() {
        let _ = writeln!(
            h,
            "<tr><td>{:.3}</td><td>{}</td></tr>",
            e["t_us"].as_f64().unwrap_or(0.0) / 1e6,
            esc(&txt(&e["what"]))
        );
    }
    let _ = writeln!(
        h,
        "</table><p>Not covered: {}.</p><p>Signature ({}): <code>{}</code> — check with <code>twinblk-ctl drill verify-report</code>.</p></body></html>",
        esc(&txt(&r["not_covered"])),
        esc(&txt(&r["signature"]["alg"])),
        esc(&txt(&r["signature"]["value"]))
    );
    h
}

/// The drill's end on the time axis, µs.
fn end_us(r: &Value) -> f64 {
    let t = &r["rto"]["timestamps_us"];
    let mut end = t["load_stopped"].as_f64().unwrap_or(1.0);
    for e in r["events"].as_array().into_iter().flatten() {
        end = end.max(e["t_us"].as_f64().unwrap_or(0.0));
    }
    end.max(1.0)
}

fn x_of(t_us: f64, end: f64) -> f64 {
    LEFT + (W - LEFT - RIGHT) * (t_us / end).clamp(0.0, 1.0)
}

fn axis(h: &mut String, end: f64, y: f64) {
    let step = nice_step(end / 1e6 / 10.0);
    let mut s = 0.0;
    while s * 1e6 <= end && s < 1e6 {
        let x = x_of(s * 1e6, end);
        let _ = write!(
            h,
            "<line x1=\"{x:.1}\" y1=\"{y}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#999\"/><text x=\"{x:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{}</text>",
            y + 4.0,
            y + 16.0,
            fmt_s(s)
        );
        s += step;
    }
    let _ = write!(
        h,
        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">s</text>",
        W - 4.0,
        y + 16.0
    );
}

fn fmt_s(s: f64) -> String {
    if (s - s.round()).abs() < 1e-9 {
        format!("{}", s.round() as i64)
    } else {
        format!("{s:.1}")
    }
}

fn nice_step(raw: f64) -> f64 {
    let raw = raw.max(0.1);
    let mag = 10f64.powf(raw.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if raw <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn timeline(h: &mut String, r: &Value) {
    let end = end_us(r);
    let sites: Vec<String> = r["sites"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| txt(&s["name"]))
        .collect();
    let lane = 34.0;
    let top = 120.0;
    let height = top + lane * sites.len() as f64 + 50.0;
    let _ = write!(
        h,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{height}\" role=\"img\" aria-label=\"timeline\">"
    );
    for (i, name) in sites.iter().enumerate() {
        let y = top + lane * i as f64;
        let _ = write!(
            h,
            "<text x=\"8\" y=\"{:.1}\" font-size=\"13\">site {}</text>",
            y + 20.0,
            esc(name)
        );
        let changes: Vec<&Value> = r["site_states"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["site"].as_str() == Some(name))
            .collect();
        for (j, c) in changes.iter().enumerate() {
            let t = c["t_us"].as_f64().unwrap_or(0.0);
            let t2 = changes
                .get(j + 1)
                .and_then(|n| n["t_us"].as_f64())
                .unwrap_or(end);
            let st = txt(&c["state"]);
            let (x1, x2) = (x_of(t, end), x_of(t2, end));
            let _ = write!(
                h,
                "<rect x=\"{x1:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{} {} from {:.3} s ({})</title></rect>",
                y + 4.0,
                (x2 - x1).max(0.5),
                lane - 10.0,
                state_color(&st),
                esc(name),
                esc(&st),
                t / 1e6,
                esc(&txt(&c["path_state"]))
            );
            if x2 - x1 > 60.0 {
                let _ = write!(
                    h,
                    "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"#fff\">{} / {}</text>",
                    x1 + 4.0,
                    y + 21.0,
                    esc(&st),
                    esc(&txt(&c["path_state"]))
                );
            }
        }
    }
    // Phase markers, labels staggered in rows above the lanes.
    let ts = &r["rto"]["timestamps_us"];
    let marks = [
        ("fault", "fault", "#c62828"),
        ("detection", "detection", "#6d4c41"),
        ("witness_decision", "witness", "#8e24aa"),
        ("path_state_change", "path", "#00838f"),
        ("first_ack_at_survivor", "first ack", "#2e7d32"),
        ("latency_back_to_normal", "latency ok", "#558b2f"),
        ("restore", "restore", "#1565c0"),
        ("in_sync", "in sync", "#283593"),
    ];
    for (i, (k, label, color)) in marks.iter().enumerate() {
        let Some(t) = ts[*k].as_f64() else { continue };
        let x = x_of(t, end);
        let ly = 16.0 + 13.0 * (i % 8) as f64;
        let _ = write!(
            h,
            "<line x1=\"{x:.1}\" y1=\"{ly:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"{color}\" stroke-dasharray=\"3,2\"/>\
             <text x=\"{:.1}\" y=\"{ly:.1}\" font-size=\"11\" fill=\"{color}\">{label} {:.3} s</text>",
            top + lane * sites.len() as f64,
            x + 3.0,
            t / 1e6
        );
    }
    axis(h, end, top + lane * sites.len() as f64 + 4.0);
    h.push_str("</svg>\n<p>Lanes: each site's mirror state as polled (green up, amber survivor, blue resyncing, red fenced/failed, grey not answering); hover for the path state.</p>\n");
}

fn latency(h: &mut String, r: &Value) {
    let end = end_us(r);
    let series: Vec<&Value> = r["load"]["series"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let base = r["load"]["baseline_p50_us"].as_f64();
    let factor = r["load"]["normal_factor"].as_f64().unwrap_or(1.5);
    let mut hi: f64 = 1000.0;
    let mut lo: f64 = 1e9;
    for s in &series {
        for k in ["p50_us", "max_us"] {
            if let Some(v) = s[k].as_f64() {
                hi = hi.max(v);
                lo = lo.min(v.max(1.0));
            }
        }
    }
    if let Some(b) = base {
        lo = lo.min(b.max(1.0));
    }
    let lo = 10f64.powf(lo.min(hi).max(1.0).log10().floor());
    let hi = 10f64.powf(hi.log10().ceil()).max(lo * 10.0);
    let (top, height) = (20.0, 260.0);
    let y_of = |v: f64| {
        let f = (v.max(lo).log10() - lo.log10()) / (hi.log10() - lo.log10());
        top + height * (1.0 - f.clamp(0.0, 1.0))
    };
    let _ = write!(
        h,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{}\" role=\"img\" aria-label=\"latency\">",
        top + height + 40.0
    );
    let mut d = lo;
    while d <= hi * 1.0001 {
        let y = y_of(d);
        let label = if d >= 1e6 {
            format!("{} s", d / 1e6)
        } else if d >= 1e3 {
            format!("{} ms", d / 1e3)
        } else {
            format!("{d} µs")
        };
        let _ = write!(
            h,
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{label}</text>",
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0
        );
        d *= 10.0;
    }
    for (k, color, width) in [("max_us", "#f4a9a8", 1.0), ("p50_us", "#1565c0", 2.0)] {
        let pts: Vec<String> = series
            .iter()
            .filter_map(|s| {
                let v = s[k].as_f64()?;
                let t = s["t_us"].as_f64()?;
                Some(format!("{:.1},{:.1}", x_of(t, end), y_of(v)))
            })
            .collect();
        if !pts.is_empty() {
            let _ = write!(
                h,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"{width}\" points=\"{}\"/>",
                pts.join(" ")
            );
        }
    }
    for s in &series {
        if s["failed"].as_u64().unwrap_or(0) > 0 {
            let x = x_of(s["t_us"].as_f64().unwrap_or(0.0), end);
            let _ = write!(
                h,
                "<circle cx=\"{x:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"#c62828\"><title>{} failed write(s)</title></circle>",
                top + height - 4.0,
                s["failed"]
            );
        }
    }
    if let Some(b) = base {
        for (v, dash, label) in [
            (b, "6,3", "baseline p50".to_string()),
            (b * factor, "2,3", format!("{factor}× baseline")),
        ] {
            let y = y_of(v);
            let _ = write!(
                h,
                "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#2e7d32\" stroke-dasharray=\"{dash}\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"#2e7d32\" text-anchor=\"end\">{label}</text>",
                W - RIGHT,
                W - RIGHT - 2.0,
                y - 3.0
            );
        }
    }
    let ts = &r["rto"]["timestamps_us"];
    for (k, color) in [("fault", "#c62828"), ("restore", "#1565c0")] {
        if let Some(t) = ts[k].as_f64() {
            let x = x_of(t, end);
            let _ = write!(
                h,
                "<line x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"{color}\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"{color}\">{k}</text>",
                top + height,
                x + 3.0,
                top + 12.0
            );
        }
    }
    axis(h, end, top + height);
    let _ = writeln!(
        h,
        "</svg>\n<p>Blue: median write latency per {} ms bucket; pink: maximum; red dots: buckets with failed writes (retried at the other site). Baseline p50 {} µs, p99 {} µs.</p>",
        r["load"]["series_bucket_us"].as_f64().unwrap_or(0.0) / 1e3,
        esc(&txt(&r["load"]["baseline_p50_us"])),
        esc(&txt(&r["load"]["baseline_p99_us"]))
    );
}

fn trend(h: &mut String, r: &Value) {
    let rows: Vec<&Value> = r["trend"].as_array().into_iter().flatten().collect();
    if rows.is_empty() {
        h.push_str("<p>No earlier drill in the history.</p>\n");
        return;
    }
    let _ = writeln!(
        h,
        "<p>History {} verified before this drill: {}.</p><table><tr><th>drill</th><th>started</th><th>kind</th><th>result</th><th>RTO (s)</th><th>RPO (writes)</th><th>resync (s)</th></tr>",
        esc(&txt(&r["history"]["path"])),
        if r["history"]["verified_before"] == true {
            "yes"
        } else {
            "NO"
        }
    );
    for e in &rows {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&txt(&e["id"])),
            esc(&txt(&e["started_utc"])),
            esc(&txt(&e["kind"])),
            if e["pass"] == true { "pass" } else { "fail" },
            esc(&txt(&e["rto_s"])),
            esc(&txt(&e["rpo_writes"])),
            esc(&txt(&e["resync_s"]))
        );
    }
    let _ = writeln!(
        h,
        "<tr><td><b>this drill</b></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table>",
        esc(&txt(&r["started_utc"])),
        esc(&txt(&r["kind"])),
        if r["result"]["pass"] == true {
            "pass"
        } else {
            "fail"
        },
        esc(&txt(&r["rto"]["rto_s"])),
        esc(&txt(&r["rpo"]["lost_writes"])),
        esc(&txt(&r["resync"]["resync_s"]))
    );
    // RTO bars: earlier drills, then this one.
    let mut vals: Vec<(String, Option<f64>)> = rows
        .iter()
        .map(|e| (txt(&e["id"]), e["rto_s"].as_f64()))
        .collect();
    vals.push(("this drill".into(), r["rto"]["rto_s"].as_f64()));
    let max = vals
        .iter()
        .filter_map(|v| v.1)
        .fold(r["targets"]["max_rto_s"].as_f64().unwrap_or(1.0), f64::max)
        .max(0.001);
    let bw = 40.0;
    let hgt = 120.0;
    let width = LEFT + bw * 1.5 * vals.len() as f64 + 20.0;
    let _ = write!(
        h,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{}\" role=\"img\" aria-label=\"RTO trend\"><text x=\"4\" y=\"14\" font-size=\"11\">RTO (s)</text>",
        hgt + 30.0
    );
    for (i, (id, v)) in vals.iter().enumerate() {
        let x = LEFT + bw * 1.5 * i as f64;
        match v {
            Some(v) => {
                let bh = hgt * v / max;
                let _ = write!(
                    h,
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{bw}\" height=\"{bh:.1}\" fill=\"#1565c0\"><title>{} {v:.3} s</title></rect><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\">{v:.2}</text>",
                    10.0 + hgt - bh,
                    esc(id),
                    x + bw / 2.0,
                    hgt + 24.0
                );
            }
            None => {
                let _ = write!(
                    h,
                    "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\">n/a</text>",
                    x + bw / 2.0,
                    hgt + 24.0
                );
            }
        }
    }
    if let Some(t) = r["targets"]["max_rto_s"].as_f64() {
        let y = 10.0 + hgt - hgt * t / max;
        let _ = write!(
            h,
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#c62828\" stroke-dasharray=\"4,3\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"#c62828\" text-anchor=\"end\">target</text>",
            width - 10.0,
            LEFT - 4.0,
            y + 3.0
        );
    }
    h.push_str("</svg>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_report_renders_and_text_is_escaped() {
        for r in [
            serde_json::json!({}),
            serde_json::json!(null),
            serde_json::json!({"id": "<script>x</script>", "sites": [{"name": "a&b"}],
                "site_states": [{"site": "a&b", "t_us": 5, "state": "up"}],
                "load": {"series": [{"t_us": 0, "p50_us": 0, "max_us": 1e12, "failed": 2}], "baseline_p50_us": 0},
                "rto": {"timestamps_us": {"fault": 1, "load_stopped": 0}},
                "trend": [{"id": "x", "rto_s": 1.0}], "targets": {"max_rto_s": 0}}),
        ] {
            let h = render(&r);
            assert!(h.starts_with("<!DOCTYPE html>") && h.ends_with("</html>\n"));
            assert!(!h.contains("<script"), "{h}");
            assert!(!h.contains("NaN") && !h.contains("inf"), "{h}");
        }
    }
}
