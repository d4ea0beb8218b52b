//! The randomised fault soak's check of each site's CDP history (netfault.rs): with CDP under
//! the mirror at both sites, every moment a site's history serves must hold, in every block
//! the writers wrote, the newest write acknowledged before that moment or one issued after it,
//! never an older one, never one issued later. Moments a history refuses (a site down,
//! fenced, resynced: docs/cdp-format.md, "Under the mirror") are counted, not checked.
//!
//! A moment is read as one read of every written block, issued and done at that moment, and
//! judged by the soak's own rule for reads ([`crate::netfault::check_reads`]). Site times
//! (CDP's clock, ns) are mapped to the test's monotonic clock by one pair of readings taken
//! when the writers started; each moment is widened by 2 ms on both sides for the mapping
//! (a write acknowledged within 2 ms before it is not required, one issued within 2 ms after
//! it is allowed).

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

fn dir(h: &Hosts, site: usize) -> std::path::PathBuf {
    h.root().join(if site == A { "a.cdp" } else { "b.cdp" })
}

/// The `[volume.cdp]` lines of `site` when `on`.
pub(crate) fn cdp_tail(h: &Hosts, on: bool, site: usize) -> String {
    if !on {
        return String::new();
    }
    format!(
        "[volume.cdp]\ndir='{}'\nsegment_size='4MiB'\n",
        dir(h, site).display()
    )
}

/// Check `MOMENTS` moments of each site's history, evenly from the writers' start (`t0`, at
/// site time `t0_site`) to now, against the writes `blocks`. Returns the problems and a
/// summary for the iteration's line.
pub(crate) fn check(
    h: &Hosts,
    blocks: &HashMap<u64, Vec<Wr>>,
    t0: Instant,
    t0_site: u64,
) -> (Vec<String>, String) {
    let now_site = twinblk::layer::cdp::clock::now();
    let ranges = [
        (REGION_A, 1024 * 4096),
        (REGION_B, 1024 * 4096),
        (BURST_OFF, 2 * BURST * 4096),
    ];
    let mut problems = Vec::new();
    let mut summary = Vec::new();
    for site in [A, 1 - A] {
        let name = if site == A { "a" } else { "b" };
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
                                issued: at.checked_sub(SLACK).unwrap_or(at),
                                done: at + SLACK,
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
