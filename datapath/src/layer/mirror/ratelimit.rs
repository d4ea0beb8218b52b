//! Rate limits for warnings that a periodic path would repeat: a site whose peer is gone
//! redials every 200 ms, and each failed dial would otherwise log a warning forever.
//!
//! Model: a [`WarnLimit`] lets the first occurrence through, then at most one every
//! [`WARN_EVERY`], which carries the number of occurrences suppressed since the previous one
//! (the summary). [`WarnLimits`] keeps one limit per reason. Clearing (the condition ended, e.g.
//! the link came up) makes the next occurrence log at once.

use std::time::{Duration, Instant};

/// Least time between two warnings of one kind.
pub const WARN_EVERY: Duration = Duration::from_secs(60);

/// One kind of warning.
#[derive(Clone, Debug)]
pub struct WarnLimit {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnLimit {
    /// At most one warning every `every`.
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// An occurrence at `now`: `Some(n)` when it is to be logged, `n` being the occurrences
    /// suppressed since the last one logged; `None` when it is to be suppressed (counted).
    pub fn check(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// The condition ended: the next occurrence is logged at once. Returns the occurrences
    /// suppressed since the last one logged (not yet reported).
    pub fn clear(&mut self) -> u64 {
        self.last = None;
        std::mem::take(&mut self.suppressed)
    }
}

/// One [`WarnLimit`] per reason.
#[derive(Clone, Debug)]
pub struct WarnLimits {
    every: Duration,
    by_reason: Vec<(&'static str, WarnLimit)>,
}

impl Default for WarnLimits {
    fn default() -> Self {
        Self::new(WARN_EVERY)
    }
}

impl WarnLimits {
    /// At most one warning per reason every `every`.
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            by_reason: Vec::new(),
        }
    }

    /// An occurrence of `reason` at `now` ([`WarnLimit::check`]).
    pub fn check(&mut self, reason: &'static str, now: Instant) -> Option<u64> {
        let i = match self.by_reason.iter().position(|(r, _)| *r == reason) {
            Some(i) => i,
            None => {
                self.by_reason.push((reason, WarnLimit::new(self.every)));
                self.by_reason.len() - 1
            }
        };
        self.by_reason[i].1.check(now)
    }

    /// Every condition ended; returns the occurrences suppressed and not yet reported.
    pub fn clear(&mut self) -> u64 {
        self.by_reason.iter_mut().map(|(_, l)| l.clear()).sum()
    }
}

/// Warnings of links not yet tied to a volume (a leader refusing a link before it knows the
/// volume): one process-wide set of limits, taken only on such a refusal.
static UNBOUND: std::sync::Mutex<Option<WarnLimits>> = std::sync::Mutex::new(None);

/// An occurrence of `reason` on a link of no known volume ([`WarnLimit::check`]).
pub fn check_unbound(reason: &'static str, now: Instant) -> Option<u64> {
    let mut g = UNBOUND.lock().unwrap_or_else(|p| p.into_inner());
    g.get_or_insert_with(WarnLimits::default).check(reason, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warning_repeated_every_200ms_logs_once_then_a_summary_a_minute() {
        let t0 = Instant::now();
        let mut l = WarnLimit::new(WARN_EVERY);
        let mut logged = Vec::new();
        // Five minutes of failures every 200 ms.
        for i in 0..1500u64 {
            let now = t0 + Duration::from_millis(200 * i);
            if let Some(n) = l.check(now) {
                logged.push((i, n));
            }
        }
        // The first, then one a minute (every 300th), each counting the 299 suppressed.
        assert_eq!(
            logged,
            vec![(0, 0), (300, 299), (600, 299), (900, 299), (1200, 299)]
        );
        // Cleared (the link came up): the next failure logs at once.
        assert_eq!(l.clear(), 299);
        let later = t0 + Duration::from_millis(200 * 1500);
        assert_eq!(l.check(later), Some(0));
        assert_eq!(l.check(later + Duration::from_millis(200)), None);
    }

    #[test]
    fn each_reason_has_its_own_limit() {
        let t0 = Instant::now();
        let mut l = WarnLimits::new(Duration::from_secs(60));
        assert_eq!(l.check("connect failed", t0), Some(0));
        assert_eq!(l.check("refused", t0), Some(0));
        assert_eq!(l.check("connect failed", t0 + Duration::from_secs(1)), None);
        assert_eq!(l.check("connect failed", t0 + Duration::from_secs(2)), None);
        assert_eq!(
            l.check("connect failed", t0 + Duration::from_secs(61)),
            Some(2)
        );
        assert_eq!(l.check("refused", t0 + Duration::from_secs(30)), None);
        assert_eq!(l.clear(), 1);
    }
}
