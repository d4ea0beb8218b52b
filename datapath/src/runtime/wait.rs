//! A reactor's wait policy, changeable while it runs (`reactor_set_wait` on the control socket).
//!
//! Model: each reactor owns one [`WaitCell`] (inside its [`ReactorStats`](super::ReactorStats)).
//! The control thread stores the policy it wants in `want`, then wakes the reactor with a
//! mailbox message (a reactor blocked in its ring under `interrupt` would otherwise notice only
//! at its next completion). The reactor loads `want` once per loop turn (one relaxed load, on a
//! cache line nobody writes while the policy stays put), and when the value differs from the
//! last one it saw, it decodes it, adopts it from the next wait decision on, and publishes what
//! it runs now in `now`. The control thread reads `now` to answer and to report it.
//!
//! Invariants:
//! - No lock and no allocation on the reactor's side: a load, a compare, and at a change a
//!   decode and a store.
//! - `want` holds 0 (nothing asked) or a valid [`encode`]d policy: the control thread
//!   validates before it stores, and [`decode`] of anything else is `None` (ignored).
//! - `now` is written only by the owning reactor (after [`WaitCell::init`] at its start).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// How a reactor waits when it has no work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitPolicy {
    /// Never block.
    Poll,
    /// Spin this long after the last work, then block.
    Adaptive(Duration),
    /// Block as soon as a turn finds no work.
    Interrupt,
}

/// Longest `adaptive` spin accepted at run time (one second: longer is `poll` in all but name).
pub const MAX_SPIN_US: u64 = 1_000_000;

const KIND_SHIFT: u32 = 56;
const SPIN_MASK: u64 = (1 << KIND_SHIFT) - 1;
const POLL: u64 = 1;
const ADAPTIVE: u64 = 2;
const INTERRUPT: u64 = 3;

/// `policy` as one non-zero word: the kind in the top byte, an adaptive spin in microseconds
/// (at most [`MAX_SPIN_US`]) below.
pub fn encode(policy: WaitPolicy) -> u64 {
    match policy {
        WaitPolicy::Poll => POLL << KIND_SHIFT,
        WaitPolicy::Adaptive(spin) => {
            (ADAPTIVE << KIND_SHIFT) | (spin.as_micros() as u64).min(MAX_SPIN_US)
        }
        WaitPolicy::Interrupt => INTERRUPT << KIND_SHIFT,
    }
}

/// The policy [`encode`] made `w` from; `None` for 0 or anything it cannot have made.
pub fn decode(w: u64) -> Option<WaitPolicy> {
    let spin = w & SPIN_MASK;
    match w >> KIND_SHIFT {
        POLL if spin == 0 => Some(WaitPolicy::Poll),
        ADAPTIVE if spin <= MAX_SPIN_US => Some(WaitPolicy::Adaptive(Duration::from_micros(spin))),
        INTERRUPT if spin == 0 => Some(WaitPolicy::Interrupt),
        _ => None,
    }
}

/// The policy's name as in the configuration (`[reactor] wait`) and the control socket.
pub fn name(policy: WaitPolicy) -> &'static str {
    match policy {
        WaitPolicy::Poll => "poll",
        WaitPolicy::Adaptive(_) => "adaptive",
        WaitPolicy::Interrupt => "interrupt",
    }
}

/// A policy from its name and, for `adaptive`, its spin (`default_spin_us` when `spin_us` is
/// `None`). Errors say what is accepted.
pub fn parse(wait: &str, spin_us: Option<u64>, default_spin_us: u64) -> Result<WaitPolicy, String> {
    let p = match wait {
        "poll" => WaitPolicy::Poll,
        "interrupt" => WaitPolicy::Interrupt,
        "adaptive" => {
            let s = spin_us.unwrap_or(default_spin_us);
            if s > MAX_SPIN_US {
                return Err(format!(
                    "spin_us {s} is too long (at most {MAX_SPIN_US} µs)"
                ));
            }
            return Ok(WaitPolicy::Adaptive(Duration::from_micros(s)));
        }
        other => {
            return Err(format!(
                "unknown wait policy {other:?} (poll, adaptive, interrupt)"
            ));
        }
    };
    if spin_us.is_some() {
        return Err(format!(
            "spin_us applies to the adaptive policy only, not to {wait:?}"
        ));
    }
    Ok(p)
}

/// One reactor's wait policy: asked for, and running.
#[repr(align(128))]
#[derive(Default)]
pub struct WaitCell {
    want: AtomicU64,
    now: AtomicU64,
}

impl WaitCell {
    /// The owning reactor starts with `policy` (owner only).
    pub fn init(&self, policy: WaitPolicy) {
        self.now.store(encode(policy), Relaxed);
    }

    /// Ask the reactor to run `policy` from its next turn on (control thread).
    pub fn request(&self, policy: WaitPolicy) {
        self.want.store(encode(policy), Relaxed);
    }

    /// The last request (0: none), for the owner to compare with what it saw before.
    pub fn wanted(&self) -> u64 {
        self.want.load(Relaxed)
    }

    /// The owner now runs `policy`.
    pub fn publish(&self, policy: WaitPolicy) {
        self.now.store(encode(policy), Relaxed);
    }

    /// What the reactor runs now (`None` before it started).
    pub fn current(&self) -> Option<WaitPolicy> {
        decode(self.now.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_policy_round_trips_and_garbage_decodes_to_nothing() {
        for p in [
            WaitPolicy::Poll,
            WaitPolicy::Interrupt,
            WaitPolicy::Adaptive(Duration::ZERO),
            WaitPolicy::Adaptive(Duration::from_micros(50)),
            WaitPolicy::Adaptive(Duration::from_micros(MAX_SPIN_US)),
        ] {
            assert_ne!(encode(p), 0);
            assert_eq!(decode(encode(p)), Some(p));
        }
        assert_eq!(decode(0), None);
        assert_eq!(decode((POLL << KIND_SHIFT) | 5), None);
        assert_eq!(decode((ADAPTIVE << KIND_SHIFT) | (MAX_SPIN_US + 1)), None);
        assert_eq!(decode(9 << KIND_SHIFT), None);
        assert_eq!(decode(u64::MAX), None);
    }

    #[test]
    fn names_parse_and_bad_ones_say_what_is_accepted() {
        assert_eq!(parse("poll", None, 50), Ok(WaitPolicy::Poll));
        assert_eq!(
            parse("adaptive", None, 50),
            Ok(WaitPolicy::Adaptive(Duration::from_micros(50)))
        );
        assert_eq!(
            parse("adaptive", Some(7), 50),
            Ok(WaitPolicy::Adaptive(Duration::from_micros(7)))
        );
        let e = parse("busy", None, 50).unwrap_err();
        assert!(e.contains("poll, adaptive, interrupt"), "{e}");
        assert!(parse("interrupt", Some(3), 50).is_err());
        assert!(parse("adaptive", Some(MAX_SPIN_US + 1), 50).is_err());
        for p in [WaitPolicy::Poll, WaitPolicy::Interrupt] {
            assert_eq!(parse(name(p), None, 1), Ok(p));
        }
    }

    #[test]
    fn a_request_is_seen_by_the_owner_and_published_as_current() {
        let c = WaitCell::default();
        assert_eq!(c.current(), None);
        assert_eq!(c.wanted(), 0);
        c.init(WaitPolicy::Poll);
        assert_eq!(c.current(), Some(WaitPolicy::Poll));
        c.request(WaitPolicy::Interrupt);
        assert_eq!(decode(c.wanted()), Some(WaitPolicy::Interrupt));
        assert_eq!(c.current(), Some(WaitPolicy::Poll), "not applied yet");
        c.publish(WaitPolicy::Interrupt);
        assert_eq!(c.current(), Some(WaitPolicy::Interrupt));
    }
}
