// SPDX-License-Identifier: MPL-2.0
//! Rate-limited warnings for the five elements: one report per interval goes out, the
//! ones held back are counted and named in the next ("(N more since the last report)"),
//! so a flood of bad input (a 30 KB batch of bad frames, a stranger's garbage) costs a
//! warning a second, not one per frame. Every drop is still counted in `stats`.

use std::time::{Duration, Instant};

/// How often a warning of one kind may reach the bus.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Lets through one report per interval, counting what it held back.
#[derive(Debug)]
pub struct RateLimit {
    interval: Duration,
    last: Option<Instant>,
    held: u64,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit::new(INTERVAL)
    }
}

impl RateLimit {
    pub fn new(interval: Duration) -> Self {
        RateLimit {
            interval,
            last: None,
            held: 0,
        }
    }

    /// `Some(n)` when a report may go out now, `n` being how many were held back before it.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|l| now.saturating_duration_since(l) < self.interval)
        {
            self.held += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
    }

    /// The text to post now (with the count of those held back since the last one), or
    /// `None` while the interval runs.
    pub fn message(&mut self, text: impl Into<String>) -> Option<String> {
        let text = text.into();
        self.allow(Instant::now()).map(|held| with_held(text, held))
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
        assert_eq!(r.allow(later), Some(9999));
        assert_eq!(with_held("x".into(), 2), "x (2 more since the last report)");
    }
}
