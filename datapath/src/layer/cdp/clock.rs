//! Site time: the one clock that stamps every CDP record of this process
//! (docs/cdp-format.md, "Time and sequence numbers").
//!
//! Model: `CLOCK_MONOTONIC + offset`, in ns. The offset starts as `CLOCK_REALTIME -
//! CLOCK_MONOTONIC` (so site time reads as wall-clock time) and is only ever raised: by
//! [`not_before`], which every history's recovery calls with its last time before the reactors
//! start, and by [`now`] when the wall clock was stepped forward (NTP correcting a clock that
//! lagged, a virtual machine's clock set after a pause): site time takes the step up at its
//! next look at the wall clock, at most [`CHECK_EVERY_NS`] later (logged), so it is behind the
//! wall clock by more than [`STEP_NS`] for at most that long, and a point an
//! operator names by the wall clock ("the second before the mistake") takes in no write made
//! after it but those of that millisecond; but not a step beyond [`FOLLOW_MAX_NS`] (logged as an error: a clock set
//! wildly wrong, followed, would stay in site time for good, and retention by age would
//! consolidate what it then believes old). A step backwards is not followed (site time runs ahead of the wall clock until it catches
//! up: a point named by the wall clock then ends earlier, never later). Invariants: [`now`]
//! never goes backwards within the process (the monotonic clock does not, the offset only
//! rises) and exceeds every time recovered from a journal of the site; it is the same clock on
//! every CPU, so an update stamped after another one completed has a time at least as high,
//! whatever volume or reactor each belongs to (the offset is one atomic, read after the raise
//! that came before).

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
        let off = r.saturating_sub(m1.saturating_add(window / 2));
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
/// step came between two readings).
pub fn wall_offset() -> u64 {
    realtime_offset(read)
}

/// A wall clock this far (ns) ahead of site time is a step forward that [`now`] takes up.
pub const STEP_NS: u64 = 1_000_000;

/// A step forward larger than this (ns) is not followed (ntpd's panic threshold, 1000 s): a
/// clock set wildly wrong for a moment and corrected back would otherwise carry site time with
/// it for good, and retention by age would consolidate every segment it then believes that
/// old. It is logged; the daemon's next start takes the wall clock as it is then.
pub const FOLLOW_MAX_NS: u64 = 1_000 * 1_000_000_000;

/// The wall clock is read at most once per this long (ns) of the monotonic clock: a step is
/// followed within it (at most one stamp per reactor in between takes the offset before it).
pub const CHECK_EVERY_NS: u64 = 1_000_000;

/// The monotonic time from which [`now`] reads the wall clock again.
static NEXT_CHECK: AtomicU64 = AtomicU64::new(0);

/// The highest offset seen and not followed (a step beyond [`FOLLOW_MAX_NS`]): logged once,
/// not at every reading of the wall clock while it stays there.
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Site time now, ns.
pub fn now() -> u64 {
    let off = offset();
    stamp(&OFFSET, &REFUSED, &NEXT_CHECK, off, read)
}

/// Site time through `read` with `offset` (holding `off`, already set): the monotonic reading
/// plus the offset, the offset first raised when the wall clock read after the monotonic one
/// is more than [`STEP_NS`] ahead of that (a step forward; or this thread preempted between
/// the two readings, which the careful reading of [`realtime_offset`] tells apart), unless the
/// step is beyond [`FOLLOW_MAX_NS`] (then logged, once per new height, `refused`). The wall clock is read
/// only once `next` (monotonic ns) has come, and `next` then moved [`CHECK_EVERY_NS`] on: one
/// atomic load more than a plain monotonic reading per call (a wall-clock read per call cost
/// 24 ns more here, twice the whole reading: benches/RESULTS.md, session 23).
fn stamp(
    offset: &AtomicU64,
    refused: &AtomicU64,
    next: &AtomicU64,
    off: u64,
    mut read: impl FnMut(libc::clockid_t) -> u64,
) -> u64 {
    let mono = read(libc::CLOCK_MONOTONIC);
    if mono < next.load(Ordering::Relaxed) {
        return mono.saturating_add(off);
    }
    next.store(mono.saturating_add(CHECK_EVERY_NS), Ordering::Relaxed);
    let wall = read(libc::CLOCK_REALTIME);
    if wall.saturating_sub(mono) <= off.saturating_add(STEP_NS) {
        return mono.saturating_add(off);
    }
    let want = realtime_offset(&mut read);
    let cur = offset.load(Ordering::Relaxed);
    if want > cur.saturating_add(FOLLOW_MAX_NS) {
        if want
            > refused
                .fetch_max(want, Ordering::Relaxed)
                .saturating_add(STEP_NS)
        {
            tracing::error!(
                step_s = (want - cur) / 1_000_000_000,
                "cdp: the wall clock was stepped forward by more than 1000 s; site time (the times of CDP records) does not follow a step that large: it stays behind the wall clock until the daemon restarts"
            );
        }
    } else if want > cur.saturating_add(STEP_NS) {
        let before = offset.fetch_max(want, Ordering::Relaxed);
        if want > before.saturating_add(STEP_NS) {
            tracing::warn!(
                step_ms = (want - before) / 1_000_000,
                "cdp: the wall clock was stepped forward; site time (the times of CDP records) follows it"
            );
        }
    }
    read(libc::CLOCK_MONOTONIC).saturating_add(offset.load(Ordering::Relaxed))
}

/// Make site time from now on exceed `t` (a time found in a journal; at `u64::MAX`, reach it:
/// site time saturates there, every later record then stamped with it, never a lower one).
pub fn not_before(t: u64) {
    let mono = read(libc::CLOCK_MONOTONIC);
    let cur = offset();
    raise(&OFFSET, cur, t, mono);
}

/// Raise `offset` (holding `cur`) so that `mono` plus it exceeds `t` (or is `u64::MAX`).
fn raise(offset: &AtomicU64, cur: u64, t: u64, mono: u64) {
    let need = t.saturating_sub(mono).saturating_add(1);
    if need > cur {
        offset.fetch_max(need, Ordering::Relaxed);
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

    /// A fake pair of clocks: the wall clock is the monotonic one plus `wall`; each reading
    /// advances the monotonic clock by 1 µs, and by `stall` more on reading number `stall_at`.
    struct Fake {
        mono: u64,
        wall: i128,
        n: usize,
        stall_at: usize,
        stall: u64,
    }

    impl Fake {
        fn read(&mut self, c: libc::clockid_t) -> u64 {
            self.n += 1;
            self.mono += 1_000;
            if self.n == self.stall_at {
                self.mono += self.stall;
            }
            if c == libc::CLOCK_REALTIME {
                u64::try_from(i128::from(self.mono) + self.wall).unwrap()
            } else {
                self.mono
            }
        }
    }

    /// A step of the wall clock forward is taken up at the next stamp; one backwards is not
    /// (site time never goes back); a stall between the two readings of a stamp does not
    /// shift site time; a step beyond FOLLOW_MAX_NS is not followed.
    #[test]
    fn site_time_follows_a_wall_clock_step_forward_never_one_backwards() {
        use std::sync::atomic::{AtomicU64, Ordering};
        const S: i128 = 1_000_000_000;
        let mut f = Fake {
            mono: 5_000_000_000,
            wall: 1000 * S,
            n: 0,
            stall_at: 0,
            stall: 0,
        };
        let off = AtomicU64::new(1000 * S as u64);
        let refused = AtomicU64::new(0);
        // Every stamp below but the last comes CHECK_EVERY_NS after the one before (so it
        // reads the wall clock).
        let next = AtomicU64::new(0);
        fn st(f: &mut Fake, off: &AtomicU64, refused: &AtomicU64, next: &AtomicU64, o: u64) -> u64 {
            f.mono += super::CHECK_EVERY_NS;
            super::stamp(off, refused, next, o, |c| f.read(c))
        }
        let t1 = st(&mut f, &off, &refused, &next, off.load(Ordering::Relaxed));
        assert_eq!(
            t1,
            f.mono - 1_000 + 1000 * S as u64,
            "the monotonic reading plus the offset"
        );
        // Stepped 2 s forward: site time reads as the wall clock again.
        f.wall += 2 * S;
        let t2 = st(&mut f, &off, &refused, &next, off.load(Ordering::Relaxed));
        let wall_now = u64::try_from(i128::from(f.mono) + f.wall).unwrap();
        assert!(
            wall_now - t2 < 10_000,
            "site time {t2} follows the wall clock {wall_now}"
        );
        assert!(off.load(Ordering::Relaxed).abs_diff(1002 * S as u64) < 10_000);
        // Stepped 5 s back: not followed, and the next stamp is still later.
        f.wall -= 5 * S;
        let t3 = st(&mut f, &off, &refused, &next, off.load(Ordering::Relaxed));
        assert!(t3 > t2);
        assert!(off.load(Ordering::Relaxed).abs_diff(1002 * S as u64) < 10_000);
        // Preempted for 300 ms between a stamp's two readings: the careful reading finds no
        // step, the offset stays.
        f.wall = 1002 * S;
        f.stall_at = f.n + 2; // between its monotonic and its wall-clock reading
        f.stall = 300_000_000;
        let before = off.load(Ordering::Relaxed);
        let t4 = st(&mut f, &off, &refused, &next, before);
        assert!(t4 > t3);
        assert!(
            off.load(Ordering::Relaxed).abs_diff(before) < 10_000,
            "no shift"
        );
        // Stepped 2000 s forward: beyond what is followed; remembered (logged once), and not
        // followed later; a step within the limit after it is followed again.
        f.stall_at = 0;
        f.wall += 2000 * S;
        for _ in 0..3 {
            let t = st(&mut f, &off, &refused, &next, off.load(Ordering::Relaxed));
            assert!(t > t4 && t < t4 + S as u64, "site time {t} stayed");
            assert!(
                off.load(Ordering::Relaxed).abs_diff(before) < 10_000,
                "not followed"
            );
        }
        assert!(refused.load(Ordering::Relaxed).abs_diff(3002 * S as u64) < 10_000);
        // Within CHECK_EVERY_NS of the last reading of the wall clock: only the monotonic
        // clock is read, and a step is not seen until the next.
        f.wall = 1010 * S;
        let (n, o) = (f.n, off.load(Ordering::Relaxed));
        let t = super::stamp(&off, &refused, &next, o, |c| f.read(c));
        assert_eq!((f.n - n, t), (1, f.mono + o), "one monotonic reading");
        let t = st(&mut f, &off, &refused, &next, o);
        assert!(off.load(Ordering::Relaxed).abs_diff(1010 * S as u64) < 10_000);
        assert!(t > o + f.mono - 10_000, "followed at the next check");
    }

    /// Times at the top of the range (a record's time at or near `u64::MAX`: a clock set
    /// wildly ahead once, a history copied from one): site time saturates at `u64::MAX` and
    /// never wraps back below the records. Before session 28, `monotonic + offset` overflowed:
    /// a panic in a debug build; in a release build a time wrapped to near zero, below every
    /// record, so the next recovery cut the history at the first record stamped with it.
    #[test]
    fn site_time_saturates_at_the_top_of_its_range_never_wraps() {
        use std::sync::atomic::{AtomicU64, Ordering};
        for t in [u64::MAX, u64::MAX - 1, u64::MAX - 5_000_000_000] {
            let off = AtomicU64::new(1);
            super::raise(&off, 1, t, 0);
            super::raise(&off, off.load(Ordering::Relaxed), t, 5_000_000_000);
            let mut f = Fake {
                mono: 5_000_000_000,
                wall: 0,
                n: 0,
                stall_at: 0,
                stall: 0,
            };
            let (refused, next) = (AtomicU64::new(0), AtomicU64::new(0));
            let mut last = t;
            for _ in 0..3 {
                f.mono += super::CHECK_EVERY_NS;
                let o = off.load(Ordering::Relaxed);
                let now = super::stamp(&off, &refused, &next, o, |c| f.read(c));
                assert!(now >= last && now > t.min(u64::MAX - 1), "{now} after {t}");
                last = now;
            }
        }
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
