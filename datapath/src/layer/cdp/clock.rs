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
    let want = read(libc::CLOCK_REALTIME)
        .saturating_sub(read(libc::CLOCK_MONOTONIC))
        .max(1);
    OFFSET.fetch_max(want, Ordering::Relaxed);
    OFFSET.load(Ordering::Relaxed)
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
}
