// SPDX-License-Identifier: MPL-2.0
//! The coalescing clock of the settings link: at most one change through per interval,
//! keeping the latest values (messages about bad input are rate-limited by
//! [`crate::rate_limit`]).

use std::time::{Duration, Instant};

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
