//! The randomised fault soak's check of each site's CDP history (netfault.rs): with CDP under
//! the mirror at both sites, every moment a site's history serves must hold, in every block
//! the writers wrote, the newest write acknowledged before that moment or one issued after it,
//! never an older one, never one issued later. Moments a history refuses (a site down,
//! fenced, resynced: docs/cdp-format.md, "Under the mirror") are counted, not checked.
//!
//! A moment is read as one read of every written block, issued and done at that moment, and
//! judged by the soak's own rule for reads ([`crate::netfault::check_reads`]). Site times
//! (CDP's clock, ns) are mapped to the test's monotonic clock through each site's own clock
//! (`daemon_info`'s `site_time_ns`, [`skew`]), read when the writers started and again before
//! the check: every process sets its clock's offset from the wall clock when it starts, so
//! two processes differ by any wall-clock step backwards between their starts (and, before
//! the offset was read with care, by a stall between two clock readings: a loaded CI machine
//! once showed one site's whole history ~190 ms "late"). A step forward moves every process's
//! site time (clock.rs), and with it the mapping onto the monotonic clock: when the wall clock
//! was stepped during the iteration no site is checked, and the iteration's line says so. A
//! site whose clock moved against this process's otherwise is a problem. Each moment is widened by 2 ms on both sides, plus the readings' uncertainty
//! (a write acknowledged within that before it is not required, one issued within that after
//! it is allowed).

use crate::harness::Server;
use crate::netfault::{BURST, BURST_OFF, REGION_A, REGION_B, Rd, Wr, check_reads, classify};
use crate::netns::{A, Hosts};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use twinblk::layer::cdp::pit::{self, Point};
use twinblk::layer::cdp::store::{self, Load};

/// Moments checked per site.
const MOMENTS: u64 = 12;

/// Widening of each moment for the clock mapping.
const SLACK: Duration = Duration::from_millis(2);

/// Site `site`'s CDP directory.
pub(crate) fn dir(h: &Hosts, site: usize) -> std::path::PathBuf {
    h.root().join(if site == A { "a.cdp" } else { "b.cdp" })
}

/// The `[volume.cdp]` lines of `site` when `on` (with `sync = "flush"` when `flush`).
pub(crate) fn cdp_tail(h: &Hosts, on: bool, flush: bool, site: usize) -> String {
    if !on {
        return String::new();
    }
    format!(
        "[volume.cdp]\ndir='{}'\nsegment_size='4MiB'\n{}",
        dir(h, site).display(),
        if flush { "sync='flush'\n" } else { "" }
    )
}

/// A site's clock against this process's (CDP's site time, `clock::now`, in each): `diff` =
/// site − test (ns), known within `within` ns.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Skew {
    pub diff: i128,
    pub within: u64,
}

/// Read `s`'s clock (`daemon_info`'s `site_time_ns`) against this process's: the narrowest
/// of three calls, the site's reading taken as the call's midpoint.
pub(crate) fn skew(s: &Server) -> Skew {
    let now = twinblk::layer::cdp::clock::now;
    let mut best: Option<Skew> = None;
    for _ in 0..3 {
        let before = now();
        let site = s.rpc("daemon_info")["site_time_ns"]
            .as_u64()
            .expect("daemon_info answers site_time_ns");
        let after = now();
        let within = (after - before) / 2 + 1;
        let k = Skew {
            diff: i128::from(site) - i128::from(before + (after - before) / 2),
            within,
        };
        if best.is_none_or(|b| k.within < b.within) {
            best = Some(k);
        }
    }
    best.expect("three readings")
}

/// This process's monotonic clock and site time read together (a pair that maps one onto the
/// other): the site time between two monotonic readings, the narrowest of a few tries.
pub(crate) fn now_pair() -> (Instant, u64) {
    let mut best: Option<(Duration, Instant, u64)> = None;
    for _ in 0..8 {
        let a = Instant::now();
        let t = twinblk::layer::cdp::clock::now();
        let b = Instant::now();
        let w = b - a;
        if best.is_none_or(|(bw, _, _)| w < bw) {
            best = Some((w, a + w / 2, t));
        }
        if w < Duration::from_micros(50) {
            break;
        }
    }
    let (_, at, t) = best.expect("tried");
    (at, t)
}

/// Check `MOMENTS` moments of each site's history, evenly from the writers' start (`t0`, at
/// this process's site time `t0_site`) to now, against the writes `blocks`. `skews`: each
/// site's clock against this process's, read at `t0` and again now (after any restart);
/// `wall0`: the wall clock's offset read before `t0_site` (it is read again here after this
/// process's site time, so a step between the two readings of either is seen). Returns the
/// problems and a summary for the iteration's line.
pub(crate) fn check(
    h: &Hosts,
    blocks: &HashMap<u64, Vec<Wr>>,
    t0: Instant,
    t0_site: u64,
    skews: [(Skew, Skew); 2],
    wall0: u64,
) -> (Vec<String>, String) {
    let now_here = twinblk::layer::cdp::clock::now();
    let wall = (wall0, twinblk::layer::cdp::clock::wall_offset());
    let ranges = [
        (REGION_A, 1024 * 4096),
        (REGION_B, 1024 * 4096),
        (BURST_OFF, 2 * BURST * 4096),
    ];
    let mut problems = Vec::new();
    let mut summary = Vec::new();
    let stepped = (i128::from(wall.1) - i128::from(wall.0)) / 1_000_000;
    for site in [A, 1 - A] {
        let name = if site == A { "a" } else { "b" };
        if stepped != 0 {
            // A step forward moved every process's site time (clock.rs), this one's too, and
            // its mapping onto the monotonic clock with it; a site restarted after a step
            // backwards has a clock behind the others'.
            summary.push(format!(
                "{name} not checked: the wall clock was stepped {stepped} ms during the iteration"
            ));
            continue;
        }
        let (k0, k1) = skews[site];
        if k0.diff.abs_diff(k1.diff) > u128::from(k0.within + k1.within + 1_000_000) {
            let moved = (k1.diff - k0.diff) / 1_000_000;
            problems.push(format!(
                "site {name}'s clock moved {moved} ms against this process's between the start and the check, with no wall-clock step"
            ));
            continue;
        }
        // This site's scale: its clock when the writers started, and now.
        let shift = |t: u64| u64::try_from(i128::from(t) + k0.diff).expect("site time");
        let (t0_site, now_site) = (shift(t0_site), shift(now_here));
        let slack = SLACK + Duration::from_nanos(k0.within);
        let hist = match store::load(&dir(h, site), Load::ReadOnly) {
            Ok(x) => x,
            Err(e) => {
                problems.push(format!("site {name}'s history does not load: {e}"));
                continue;
            }
        };
        let (mut served, mut refused) = (0, 0);
        for k in 1..=MOMENTS {
            let t_site = t0_site + (now_site - t0_site) * k / (MOMENTS + 1);
            let at = t0 + Duration::from_nanos(t_site - t0_site);
            let mut reads = Vec::new();
            let mut ok = true;
            for &(off, len) in &ranges {
                match pit::read_at(&hist, Point::Time(t_site), off, len) {
                    Ok(d) => {
                        for (i, b) in d.chunks(4096).enumerate() {
                            let o = off + i as u64 * 4096;
                            if !blocks.contains_key(&o) {
                                continue;
                            }
                            reads.push(Rd {
                                site,
                                off: o,
                                seed: classify(b, o),
                                issued: at.checked_sub(slack).unwrap_or(at),
                                done: at + slack,
                            });
                        }
                    }
                    Err(_) => {
                        ok = false;
                        break;
                    }
                }
            }
            if !ok {
                refused += 1;
                continue;
            }
            served += 1;
            let (bad, n) = check_reads(blocks, &reads, t0, 4);
            if n > 0 {
                problems.push(format!(
                    "site {name}'s history at {} ms (site time {t_site}) serves {n} blocks older than acknowledged writes, or impossible, e.g.:\n    {}",
                    at.duration_since(t0).as_millis(),
                    bad.join("\n    ")
                ));
            }
        }
        summary.push(format!("{name} {served}/{refused}"));
    }
    let s = format!("history moments served/refused: {}", summary.join(", "));
    (problems, s)
}
