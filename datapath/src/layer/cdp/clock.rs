//! Site time: the one clock that stamps every CDP record of this process
//! (docs/cdp-format.md, "Time and sequence numbers").
//!
//! Model: `CLOCK_MONOTONIC + offset`, in ns. The offset starts as `CLOCK_REALTIME -
//! CLOCK_MONOTONIC` (so site time reads as wall-clock time) and is only ever raised, by
//! [`not_before`], which every history's recovery calls with its last time before the reactors
//! start. Invariants: [`now`] never goes backwards within the process (the monotonic clock does
//! not, the offset only rises) and exceeds every time recovered from a journal of the site;
//! it is the same clock on every CPU, so an update stamped after another one completed has a
//! time at least as high, whatever volume or reactor each belongs to.

use std::sync::atomic::{AtomicU64, Ordering};

/// The offset; 0 until first used.
static OFFSET: AtomicU64 = AtomicU64::new(0);

fn read(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through the pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn offset() -> u64 {
    let o = OFFSET.load(Ordering::Relaxed);
    if o != 0 {
        return o;
    }
    let want = realtime_offset(read).max(1);
    OFFSET.fetch_max(want, Ordering::Relaxed);
    OFFSET.load(Ordering::Relaxed)
}

/// Tries at reading the two clocks together.
const OFFSET_TRIES: usize = 8;

/// A window this narrow (ns) between the two monotonic readings is taken at once.
const OFFSET_GOOD_NS: u64 = 20_000;

/// `CLOCK_REALTIME - CLOCK_MONOTONIC` as read through `read`: the realtime reading between
/// two monotonic ones, compared with their midpoint. A thread preempted between the readings
/// (a loaded machine: hundreds of ms) would otherwise shift this process's site time by the
/// stall, for its whole life, against the wall clock and against the site's other processes;
/// so the narrowest of up to [`OFFSET_TRIES`] windows is kept.
fn realtime_offset(mut read: impl FnMut(libc::clockid_t) -> u64) -> u64 {
    let mut best: Option<(u64, u64)> = None;
    for _ in 0..OFFSET_TRIES {
        let m1 = read(libc::CLOCK_MONOTONIC);
        let r = read(libc::CLOCK_REALTIME);
        let m2 = read(libc::CLOCK_MONOTONIC);
        let window = m2.saturating_sub(m1);
        let off = r.saturating_sub(m1 + window / 2);
        if best.is_none_or(|(w, _)| window < w) {
            best = Some((window, off));
        }
        if window <= OFFSET_GOOD_NS {
            break;
        }
    }
    best.map_or(0, |(_, off)| off)
}

/// `CLOCK_REALTIME - CLOCK_MONOTONIC` as it reads now (ns): what a process starting now
/// would take as its offset. It moves only when the wall clock is stepped (tests: whether a
/// step came between two processes' starts).
pub fn wall_offset() -> u64 {
    realtime_offset(read)
}

/// Site time now, ns.
pub fn now() -> u64 {
    read(libc::CLOCK_MONOTONIC) + offset()
}

/// Make site time from now on exceed `t` (a time found in a journal).
pub fn not_before(t: u64) {
    let mono = read(libc::CLOCK_MONOTONIC);
    let need = t.saturating_sub(mono) + 1;
    if need > offset() {
        OFFSET.fetch_max(need, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn site_time_rises_and_passes_recovered_times() {
        let a = super::now();
        let b = super::now();
        assert!(b >= a);
        super::not_before(b + 5_000_000_000);
        assert!(super::now() > b + 5_000_000_000);
    }

    /// A stall between the readings (the thread preempted) must not shift the offset: the
    /// narrowest window is kept.
    #[test]
    fn a_stall_between_the_clock_readings_does_not_shift_site_time() {
        // Wall clock = monotonic + 1000 s. The first try stalls 300 ms before its realtime
        // reading, the second 300 ms after it, the third reads at once.
        let mut mono = 5_000_000_000u64;
        let mut n = 0;
        let off = super::realtime_offset(|c| {
            n += 1;
            let stall = match n {
                2 | 6 => 300_000_000,
                _ => 1_000,
            };
            mono += stall;
            if c == libc::CLOCK_REALTIME {
                mono + 1_000_000_000_000
            } else {
                mono
            }
        });
        assert_eq!(n, 9, "three tries, the third narrow enough");
        // The third try's window is 2 us: the offset is within 1 us of the truth.
        assert!(
            off.abs_diff(1_000_000_000_000) <= 1_000,
            "offset {off}, want 1000 s"
        );
        // The first reading alone (the old way) would be off by the stall.
    }
}
