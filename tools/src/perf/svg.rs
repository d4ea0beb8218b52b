//! The timeline as an SVG picture a person can open in any browser: IOPS per second on top,
//! p50 and p99 latency per second below, on a shared time axis. Plain SVG 1.1, no script. A
//! final interval shorter than half a second (the drain at the end of a timed run) is not
//! drawn; the JSON timeline keeps it.
//!
//! Every number written is finite (non-finite values are drawn as 0) and every text is
//! XML-escaped, so the output is always well-formed.

use super::report::{Point, Report};
use std::fmt::Write;

const W: f64 = 900.0;
const PANEL_H: f64 = 240.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 50.0;
const GAP: f64 = 60.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn fin(v: f64) -> f64 {
    if v.is_finite() { v } else { 0.0 }
}

/// A round upper bound for an axis (1, 2 or 5 times a power of ten).
fn nice(max: f64) -> f64 {
    let max = fin(max).max(1e-9);
    let p = 10f64.powf(max.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= max {
            return m * p;
        }
    }
    10.0 * p
}

fn fmt_num(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 10.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

struct Panel {
    y0: f64,
    tmax: f64,
    ymax: f64,
}

impl Panel {
    fn x(&self, t: f64) -> f64 {
        LEFT + fin(t) / self.tmax * (W - LEFT - RIGHT)
    }
    fn y(&self, v: f64) -> f64 {
        self.y0 + PANEL_H - fin(v).clamp(0.0, self.ymax) / self.ymax * PANEL_H
    }

    fn axes(&self, s: &mut String, label: &str) {
        let _ = write!(
            s,
            r##"<rect x="{LEFT}" y="{}" width="{}" height="{PANEL_H}" fill="none" stroke="#888"/>"##,
            self.y0,
            W - LEFT - RIGHT
        );
        for i in 0..=4 {
            let v = self.ymax * f64::from(i) / 4.0;
            let y = self.y(v);
            let _ = write!(
                s,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11">{}</text>"##,
                W - RIGHT,
                LEFT - 6.0,
                y + 4.0,
                fmt_num(v)
            );
        }
        let step = nice(self.tmax / 8.0).max(1.0);
        let mut t = 0.0;
        while t <= self.tmax + 1e-9 {
            let x = self.x(t);
            let _ = write!(
                s,
                r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#888"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" font-size="11">{}</text>"##,
                self.y0 + PANEL_H,
                self.y0 + PANEL_H + 4.0,
                self.y0 + PANEL_H + 16.0,
                fmt_num(t)
            );
            t += step;
        }
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="end">{}</text>"##,
            W - RIGHT,
            self.y0 - 8.0,
            esc(label)
        );
    }

    fn line(&self, s: &mut String, pts: &[Point], f: impl Fn(&Point) -> f64, color: &str) {
        let mut d = String::new();
        for p in pts {
            let _ = write!(d, "{:.1},{:.1} ", self.x(p.t), self.y(f(p)));
        }
        let _ = write!(
            s,
            r##"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"##,
            d.trim_end()
        );
    }
}

/// Render `r`'s timeline.
pub fn render(r: &Report) -> String {
    // A last interval much shorter than a second holds only the drain of the requests in
    // flight: scaled to a rate it would look like a collapse, so it is left out of the plot.
    let mut pts: &[Point] = &r.timeline;
    if let [rest @ .., last] = pts {
        let part = last.t - last.t.floor();
        if !rest.is_empty() && part > 0.0 && part < 0.5 {
            pts = rest;
        }
    }
    let tmax = pts.last().map(|p| p.t).unwrap_or(1.0).max(1.0);
    let iops_max = nice(pts.iter().map(|p| p.iops).fold(0.0, f64::max));
    let lat_max = nice(pts.iter().map(|p| p.p99_us).fold(0.0, f64::max));
    let h = TOP + 2.0 * PANEL_H + GAP + 40.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif">"##
    );
    let title = format!(
        "twinperf {:?} {} {:?} bs {} qd {} x {} conn: {:.0} IOPS, p50 {:.1} µs, p99 {:.1} µs",
        r.proto, r.name, r.rw, r.bs, r.qd, r.conns, r.iops, r.latency_us.p50, r.latency_us.p99
    );
    let _ = write!(
        s,
        r##"<title>{t}</title><rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="24" font-size="14">{t}</text>"##,
        t = esc(&title)
    );
    let top = Panel {
        y0: TOP,
        tmax,
        ymax: iops_max,
    };
    top.axes(&mut s, "IOPS");
    top.line(&mut s, pts, |p| p.iops, "#1f77b4");
    let bottom = Panel {
        y0: TOP + PANEL_H + GAP,
        tmax,
        ymax: lat_max,
    };
    bottom.axes(&mut s, "latency µs");
    bottom.line(&mut s, pts, |p| p.p50_us, "#2ca02c");
    bottom.line(&mut s, pts, |p| p.p99_us, "#d62728");
    let ly = TOP + PANEL_H + GAP - 10.0;
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="{ly:.1}" font-size="12" fill="#2ca02c">p50</text><text x="{:.1}" y="{ly:.1}" font-size="12" fill="#d62728">p99</text><text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">seconds</text></svg>"##,
        LEFT + 40.0,
        LEFT + (W - LEFT - RIGHT) / 2.0,
        h - 8.0
    );
    s
}
