// SPDX-License-Identifier: MPL-2.0
//! Bounds the settings link puts on what others send: a rate limit for messages about
//! bad input (a flood of bad packets must not become a flood of log lines), and the
//! coalescing clock that lets at most one change through per interval while keeping the
//! latest values.

use std::time::{Duration, Instant};

/// Lets at most `per_second` messages through each second and counts the rest.
#[derive(Clone, Debug)]
pub struct RateLimiter {
    per_second: u32,
    window_start: Instant,
    in_window: u32,
    held_back: u64,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> RateLimiter {
        RateLimiter {
            per_second,
            window_start: Instant::now(),
            in_window: 0,
            held_back: 0,
        }
    }

    /// `Some(n)`: say this one now; `n` similar ones were held back since the last one
    /// said. `None`: only count it.
    pub fn allow(&mut self) -> Option<u64> {
        if self.window_start.elapsed() >= Duration::from_secs(1) {
            self.window_start = Instant::now();
            self.in_window = 0;
        }
        if self.in_window >= self.per_second {
            self.held_back += 1;
            return None;
        }
        self.in_window += 1;
        Some(std::mem::take(&mut self.held_back))
    }
}

/// When the next coalesced change may go: at most one per `interval`; the first change
/// after a quiet interval goes at once.
#[derive(Clone, Debug)]
pub struct Pacer {
    interval: Duration,
    last: Option<Instant>,
}

impl Pacer {
    pub fn new(interval: Duration) -> Pacer {
        Pacer {
            interval,
            last: None,
        }
    }

    /// How long from `now` until the next one may go (zero: at once).
    pub fn wait(&self, now: Instant) -> Duration {
        self.last
            .map(|t| (t + self.interval).saturating_duration_since(now))
            .unwrap_or(Duration::ZERO)
    }

    /// True (and the clock restarted) when one may go now.
    pub fn take(&mut self, now: Instant) -> bool {
        if !self.wait(now).is_zero() {
            return false;
        }
        self.last = Some(now);
        true
    }

    /// One went now for another reason (a heartbeat carried the latest values).
    pub fn mark(&mut self, now: Instant) {
        self.last = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_counts_what_it_holds_back() {
        let mut r = RateLimiter::new(3);
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), None);
        assert_eq!(r.allow(), None);
        r.window_start -= Duration::from_secs(2);
        assert_eq!(r.allow(), Some(2));
        assert_eq!(r.allow(), Some(0));
    }

    #[test]
    fn pacer_lets_one_through_per_interval() {
        let start = Instant::now();
        let mut p = Pacer::new(Duration::from_millis(30));
        assert!(p.take(start));
        assert!(!p.take(start + Duration::from_millis(10)));
        assert_eq!(
            p.wait(start + Duration::from_millis(10)),
            Duration::from_millis(20)
        );
        assert!(p.take(start + Duration::from_millis(30)));
        p.mark(start + Duration::from_millis(50));
        assert!(!p.take(start + Duration::from_millis(70)));
        assert!(p.take(start + Duration::from_millis(80)));
        // Interval 0: every one goes at once.
        let mut p = Pacer::new(Duration::ZERO);
        assert!(p.take(start) && p.take(start));
    }
}
