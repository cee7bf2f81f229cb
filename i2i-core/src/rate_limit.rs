// SPDX-License-Identifier: MPL-2.0
//! Rate-limited warnings, the one kind for every element and tool: up to `burst` reports
//! per interval go out, the ones held back are counted and named in the next ("(N more
//! since the last report)"), so a flood of bad input (a 30 KB batch of bad frames, a
//! stranger's garbage, a flood of OSC packets) costs a warning a second, not one per
//! message. Every drop is still counted in the element's stats.

use std::time::{Duration, Instant};

/// How often a warning of one kind may reach the bus.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Lets through `burst` reports per interval, counting what it held back. The interval
/// starts with the first report let through after a quiet one.
#[derive(Clone, Debug)]
pub struct RateLimit {
    burst: u32,
    interval: Duration,
    window_start: Option<Instant>,
    in_window: u32,
    held: u64,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit::new(INTERVAL)
    }
}

impl RateLimit {
    /// One report per `interval`.
    pub fn new(interval: Duration) -> Self {
        RateLimit {
            burst: 1,
            interval,
            window_start: None,
            in_window: 0,
            held: 0,
        }
    }

    /// `n` reports per second.
    pub fn per_second(n: u32) -> Self {
        RateLimit {
            burst: n.max(1),
            ..RateLimit::new(Duration::from_secs(1))
        }
    }

    /// `Some(n)` when a report may go out now, `n` being how many were held back before
    /// it; `None`: only count it.
    pub fn allow(&mut self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    /// [`RateLimit::allow`] at `now`.
    pub fn allow_at(&mut self, now: Instant) -> Option<u64> {
        let ended = self
            .window_start
            .is_none_or(|s| now.saturating_duration_since(s) >= self.interval);
        if ended {
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window >= self.burst {
            self.held += 1;
            return None;
        }
        self.in_window += 1;
        Some(std::mem::take(&mut self.held))
    }

    /// The text to post now (with the count of those held back since the last one), or
    /// `None` while the interval runs.
    pub fn message(&mut self, text: impl Into<String>) -> Option<String> {
        let text = text.into();
        self.allow().map(|held| with_held(text, held))
    }
}

/// `text` with the number of warnings held back before it.
pub fn with_held(text: String, held: u64) -> String {
    if held > 0 {
        format!("{text} ({held} more since the last report)")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_report_per_interval_with_the_count_held_back() {
        let mut r = RateLimit::new(Duration::from_secs(3600));
        assert_eq!(r.message("bad frame").as_deref(), Some("bad frame"));
        for _ in 0..9999 {
            assert_eq!(r.message("bad frame"), None);
        }
        let later = Instant::now() + Duration::from_secs(3601);
        assert_eq!(r.allow_at(later), Some(9999));
        assert_eq!(with_held("x".into(), 2), "x (2 more since the last report)");
    }

    #[test]
    fn a_burst_per_second_counts_what_it_holds_back() {
        let start = Instant::now();
        let mut r = RateLimit::per_second(3);
        assert_eq!(r.allow_at(start), Some(0));
        assert_eq!(r.allow_at(start), Some(0));
        assert_eq!(r.allow_at(start), Some(0));
        assert_eq!(r.allow_at(start), None);
        assert_eq!(r.allow_at(start), None);
        let later = start + Duration::from_secs(2);
        assert_eq!(r.allow_at(later), Some(2));
        assert_eq!(r.allow_at(later), Some(0));
    }
}
