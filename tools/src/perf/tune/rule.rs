//! The recommendation rule of `twinperf tune`: which measured point to recommend, and why.
//!
//! Model: a point is one (wait policy, queues, depth) run with its measured IOPS, p99 latency
//! and (when the server's CPU could be read) the server's CPU time per I/O. The rule:
//!
//! 1. Usable points: no I/O error and IOPS > 0. None usable: no recommendation.
//! 2. Near-best: IOPS at least [`IOPS_FLOOR`] (90 %) of the best usable IOPS.
//! 3. Latency guard: among the near-best, p99 at most [`P99_CEILING`] (2x) the lowest p99 of
//!    the near-best (the point with the best IOPS may itself be cut by it, never all of them).
//! 4. Among what is left: the least server CPU per I/O when every one of them has a CPU
//!    figure; else the lowest p99. Ties (within 5 % of CPU, or of p99) go to the lower p99,
//!    then fewer queues, then a lower depth: the same throughput with fewer resources.
//!
//! The reason names the point, its IOPS and p99, its ratio to the best IOPS (and which point
//! that was), and its CPU per I/O against that point's.
//!
//! Invariants: the recommendation is always one of the points given (an index into them);
//! the rule never panics on any numbers (NaN, infinities and zeros are treated as unusable or
//! as "no figure").

use serde::Serialize;

/// A point must reach this share of the best IOPS to be considered.
pub const IOPS_FLOOR: f64 = 0.9;
/// A near-best point's p99 may be at most this many times the lowest near-best p99.
pub const P99_CEILING: f64 = 2.0;
/// Values within this fraction of each other count as equal.
const TIE: f64 = 0.05;

/// What the rule looks at for one point.
#[derive(Clone, Debug, PartialEq)]
pub struct Measured {
    /// Wait policy name.
    pub wait: String,
    /// Connections (NVMe: I/O queues).
    pub queues: u32,
    /// Requests in flight per queue.
    pub depth: u32,
    /// I/Os per second.
    pub iops: f64,
    /// p99 latency, µs.
    pub p99_us: f64,
    /// Server CPU µs per I/O (None: not measured).
    pub cpu_us_per_io: Option<f64>,
    /// I/Os that failed.
    pub errors: u64,
}

/// The rule's answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Recommendation {
    /// Index of the recommended point.
    pub index: usize,
    /// Index of the point with the best IOPS.
    pub best_iops_index: usize,
    /// Recommended IOPS / best IOPS.
    pub iops_ratio: f64,
    /// 1 - recommended CPU per I/O / the best-IOPS point's (None: not both measured).
    pub cpu_saving: Option<f64>,
    /// Whether CPU per I/O decided (else p99 did).
    pub by_cpu: bool,
    /// One line: the point, its figures, and why.
    pub reason: String,
}

fn usable(p: &Measured) -> bool {
    p.errors == 0 && p.iops.is_finite() && p.iops > 0.0
}

fn cpu_of(p: &Measured) -> Option<f64> {
    p.cpu_us_per_io.filter(|c| c.is_finite() && *c > 0.0)
}

fn p99_of(p: &Measured) -> f64 {
    if p.p99_us.is_finite() && p.p99_us > 0.0 {
        p.p99_us
    } else {
        f64::INFINITY
    }
}

/// `a` is less than `b` by more than the tie margin.
fn clearly_less(a: f64, b: f64) -> bool {
    a < b * (1.0 - TIE)
}

/// A point as the reason names it.
pub fn label(p: &Measured) -> String {
    format!(
        "wait={}, {} queue{}, depth {}",
        p.wait,
        p.queues,
        if p.queues == 1 { "" } else { "s" },
        p.depth
    )
}

/// IOPS in short form: 312k, 1.25M, 950.
pub fn short_iops(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Apply the rule (module docs) to `points`.
pub fn recommend(points: &[Measured]) -> Option<Recommendation> {
    let ok: Vec<usize> = (0..points.len()).filter(|&i| usable(&points[i])).collect();
    let best = *ok.iter().max_by(|&&a, &&b| {
        points[a]
            .iops
            .partial_cmp(&points[b].iops)
            .unwrap_or(std::cmp::Ordering::Equal)
            // Equal IOPS: the earlier point (max_by keeps the last of equals otherwise).
            .then(b.cmp(&a))
    })?;
    let best_iops = points[best].iops;
    let near: Vec<usize> = ok
        .iter()
        .copied()
        .filter(|&i| points[i].iops >= IOPS_FLOOR * best_iops)
        .collect();
    let min_p99 = near
        .iter()
        .map(|&i| p99_of(&points[i]))
        .fold(f64::INFINITY, f64::min);
    let left: Vec<usize> = near
        .iter()
        .copied()
        .filter(|&i| !min_p99.is_finite() || p99_of(&points[i]) <= P99_CEILING * min_p99)
        .collect();
    let by_cpu = left.iter().all(|&i| cpu_of(&points[i]).is_some());
    // Better by the deciding figure, then p99, then fewer queues, then a lower depth.
    let better = |a: usize, b: usize| -> bool {
        let (pa, pb) = (&points[a], &points[b]);
        if by_cpu {
            let (ca, cb) = (cpu_of(pa).unwrap_or(0.0), cpu_of(pb).unwrap_or(0.0));
            if clearly_less(ca, cb) {
                return true;
            }
            if clearly_less(cb, ca) {
                return false;
            }
        }
        let (la, lb) = (p99_of(pa), p99_of(pb));
        if clearly_less(la, lb) {
            return true;
        }
        if clearly_less(lb, la) {
            return false;
        }
        (pa.queues, pa.depth) < (pb.queues, pb.depth)
    };
    let mut pick = *left.first()?;
    for &i in &left[1..] {
        if better(i, pick) {
            pick = i;
        }
    }
    let p = &points[pick];
    let b = &points[best];
    let ratio = p.iops / best_iops;
    let cpu_saving = match (cpu_of(p), cpu_of(b)) {
        (Some(c), Some(cb)) => Some(1.0 - c / cb),
        _ => None,
    };
    let mut reason = format!(
        "{}: {} IOPS at p99 {:.0} µs, ",
        label(p),
        short_iops(p.iops),
        p.p99_us
    );
    if pick == best {
        reason.push_str("the best IOPS of the sweep");
    } else {
        reason.push_str(&format!(
            "{ratio:.2}x of the best IOPS ({}: {})",
            label(b),
            short_iops(b.iops)
        ));
    }
    match (cpu_of(p), cpu_of(b), cpu_saving) {
        (Some(c), _, _) if pick == best => {
            reason.push_str(&format!(" at {c:.2} µs of server CPU per I/O"))
        }
        (Some(c), Some(cb), Some(s)) if s.abs() >= 0.005 => reason.push_str(&format!(
            " at {:.0} % {} CPU per I/O ({c:.2} vs {cb:.2} µs)",
            s.abs() * 100.0,
            if s > 0.0 { "less" } else { "more" }
        )),
        (Some(c), Some(_), _) => reason.push_str(&format!(" at the same CPU per I/O ({c:.2} µs)")),
        _ => {}
    }
    reason.push_str(if by_cpu {
        "; the least CPU per I/O among the points within 10 % of the best IOPS"
    } else {
        "; the lowest p99 among the points within 10 % of the best IOPS (CPU per I/O not measured)"
    });
    Some(Recommendation {
        index: pick,
        best_iops_index: best,
        iops_ratio: ratio,
        cpu_saving,
        by_cpu,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(wait: &str, queues: u32, depth: u32, iops: f64, p99: f64, cpu: Option<f64>) -> Measured {
        Measured {
            wait: wait.into(),
            queues,
            depth,
            iops,
            p99_us: p99,
            cpu_us_per_io: cpu,
            errors: 0,
        }
    }

    #[test]
    fn the_least_cpu_within_ten_percent_of_the_best_iops_wins() {
        let pts = vec![
            m("poll", 4, 128, 335_000.0, 500.0, Some(2.0)),
            m("adaptive", 2, 32, 312_000.0, 410.0, Some(1.2)),
            // Cheaper still, but 0.66x of the best: out.
            m("interrupt", 1, 32, 220_000.0, 300.0, Some(0.9)),
            m("poll", 1, 1, 40_000.0, 30.0, Some(5.0)),
        ];
        let r = recommend(&pts).unwrap();
        assert_eq!(r.index, 1);
        assert_eq!(r.best_iops_index, 0);
        assert!(r.by_cpu);
        assert!((r.iops_ratio - 312.0 / 335.0).abs() < 1e-9);
        assert!((r.cpu_saving.unwrap() - 0.4).abs() < 1e-9);
        assert!(
            r.reason.starts_with(
                "wait=adaptive, 2 queues, depth 32: 312k IOPS at p99 410 µs, 0.93x of the best IOPS \
                 (wait=poll, 4 queues, depth 128: 335k) at 40 % less CPU per I/O (1.20 vs 2.00 µs)"
            ),
            "{}",
            r.reason
        );
    }

    #[test]
    fn a_near_best_point_with_a_p99_over_twice_the_lowest_is_not_recommended() {
        let pts = vec![
            m("poll", 2, 32, 300_000.0, 200.0, Some(2.0)),
            // Within 10 % and far cheaper, but its p99 is 5x: cut by the latency guard.
            m("interrupt", 2, 128, 290_000.0, 1000.0, Some(0.5)),
            m("adaptive", 2, 32, 295_000.0, 380.0, Some(1.5)),
        ];
        let r = recommend(&pts).unwrap();
        assert_eq!(r.index, 2, "{}", r.reason);
    }

    #[test]
    fn without_cpu_figures_the_lowest_p99_decides_and_ties_go_to_fewer_resources() {
        let pts = vec![
            m("adaptive", 4, 32, 100_000.0, 400.0, None),
            m("adaptive", 2, 32, 97_000.0, 300.0, None),
            m("adaptive", 1, 32, 96_000.0, 305.0, None),
        ];
        let r = recommend(&pts).unwrap();
        assert!(!r.by_cpu);
        // 300 and 305 are a tie (within 5 %): one queue is fewer resources.
        assert_eq!(r.index, 2, "{}", r.reason);
        assert!(
            r.reason.contains("CPU per I/O not measured"),
            "{}",
            r.reason
        );
        // One point without a CPU figure among CPU-measured ones: p99 decides for all.
        let mut pts = pts;
        pts[0].cpu_us_per_io = Some(1.0);
        assert!(!recommend(&pts).unwrap().by_cpu);
    }

    #[test]
    fn failed_or_empty_points_are_never_recommended_and_bad_numbers_do_not_panic() {
        assert_eq!(recommend(&[]), None);
        let mut bad = m("poll", 1, 1, 500_000.0, 10.0, Some(0.1));
        bad.errors = 3;
        let pts = vec![
            bad,
            m("poll", 1, 8, f64::NAN, 10.0, Some(1.0)),
            m("poll", 1, 32, 0.0, 10.0, Some(1.0)),
            m("adaptive", 1, 32, 1000.0, f64::NAN, Some(f64::INFINITY)),
        ];
        let r = recommend(&pts).unwrap();
        assert_eq!(r.index, 3);
        assert_eq!(r.best_iops_index, 3);
        assert!(
            r.reason.contains("the best IOPS of the sweep"),
            "{}",
            r.reason
        );
        let all_bad = vec![pts[0].clone(), pts[1].clone(), pts[2].clone()];
        assert_eq!(recommend(&all_bad), None);
    }

    #[test]
    fn the_best_point_is_recommended_when_nothing_is_cheaper() {
        let pts = vec![
            m("poll", 2, 32, 200_000.0, 300.0, Some(1.0)),
            m("adaptive", 2, 32, 150_000.0, 300.0, Some(0.8)),
        ];
        let r = recommend(&pts).unwrap();
        assert_eq!((r.index, r.best_iops_index), (0, 0));
        assert_eq!(r.cpu_saving, Some(0.0));
        assert!(
            r.reason.contains("the best IOPS of the sweep at 1.00 µs"),
            "{}",
            r.reason
        );
    }
}
