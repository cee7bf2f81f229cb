// SPDX-License-Identifier: MPL-2.0
//! The counters and timings an inference element keeps for its `stats` property and its
//! `<element>-stats` messages, and the estimates its LATENCY answer is built from.
//!
//! What every inference element counts lives here; what only one element counts (skipped
//! frames, settings applied) is its `extra`.

use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Stats<X> {
    pub frames_in: u64,
    pub frames_out: u64,
    /// Lost to a flush or a stop.
    pub frames_dropped: u64,
    /// Dropped oldest first because live input came faster than inference.
    pub frames_late: u64,
    /// Input frames that could not be read.
    pub frames_invalid: u64,
    pub batches: u64,
    pub first_inference: Option<Duration>,
    /// Calls after the first (which includes ONNX Runtime's warm-up).
    pub inference_total: Duration,
    pub inference_calls: u64,
    /// The execution provider actually running.
    pub provider: Option<&'static str>,
    /// Frames the model holds back (the stream batch of `i2itransform`; 0 for a model that
    /// gives each frame back in its own call).
    pub latency_frames: usize,
    pub batch_size: usize,
    /// Input conversion (streaming thread) and output conversion (output thread) time,
    /// summed over the frames in and out.
    pub input_work: Duration,
    pub output_work: Duration,
    /// When the last stats message was posted.
    pub last_posted: Option<Instant>,
    /// The inference estimate in the last LATENCY answer, to tell when to re-announce it.
    pub announced_inference: Option<Duration>,
    /// What only this element counts.
    pub extra: X,
}

impl<X> Stats<X> {
    /// Every frame dropped: the `dropped` of the stats structure.
    pub fn dropped(&self) -> u64 {
        self.frames_dropped + self.frames_late + self.frames_invalid
    }
}

impl<X: Default> Stats<X> {
    /// Fresh counters for a model that just loaded.
    pub fn started(provider: &'static str, batch_size: usize, latency_frames: usize) -> Self {
        Stats {
            provider: Some(provider),
            batch_size,
            latency_frames,
            last_posted: Some(Instant::now()),
            ..Stats::default()
        }
    }
}

impl<X> Stats<X> {
    /// The time of one model call: the average after the first (warm-up) call, else the
    /// first.
    pub fn inference_estimate(&self) -> Option<Duration> {
        if self.inference_calls > 0 {
            Some(self.inference_total / self.inference_calls as u32)
        } else {
            self.first_inference
        }
    }

    /// What a frame spends in conversion before and after the model, on average.
    pub fn conversion_estimate(&self) -> gst::ClockTime {
        let avg = |total: Duration, n: u64| {
            if n > 0 {
                total / n.min(u32::MAX as u64) as u32
            } else {
                Duration::ZERO
            }
        };
        let d = avg(self.input_work, self.frames_in) + avg(self.output_work, self.frames_out);
        gst::ClockTime::from_nseconds(d.as_nanos() as u64)
    }

    /// Counts one model call; true when the latency is to be announced again: the first
    /// estimate, or one that moved by more than a quarter since the last LATENCY answer.
    pub fn record_inference(&mut self, took: Duration) -> bool {
        self.batches += 1;
        if self.first_inference.is_none() {
            self.first_inference = Some(took);
        } else {
            self.inference_total += took;
            self.inference_calls += 1;
        }
        match (self.announced_inference, self.inference_estimate()) {
            (None, Some(_)) => self.batches == 1 || self.inference_calls == 1,
            (Some(old), Some(new)) => {
                let (a, b) = (old.as_secs_f64(), new.as_secs_f64());
                (a - b).abs() > 0.25 * a.max(b) && (a - b).abs() > 0.001
            }
            _ => false,
        }
    }

    /// Whether a stats message is due `interval_ms` after the last one (0: only when
    /// forced); marks it posted when it is.
    pub fn post_due(&mut self, interval_ms: u32, force: bool) -> bool {
        let due = self.last_posted.is_none_or(|t| {
            interval_ms > 0 && t.elapsed() >= Duration::from_millis(interval_ms as u64)
        });
        if force || due {
            self.last_posted = Some(Instant::now());
        }
        force || due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_call_is_warm_up_and_a_moved_estimate_is_announced() {
        let ms = Duration::from_millis;
        let mut s = Stats::<()>::default();
        assert_eq!(s.inference_estimate(), None);
        assert!(s.record_inference(ms(100)));
        assert_eq!(s.inference_estimate(), Some(ms(100)));
        s.announced_inference = s.inference_estimate();
        // The warm-up call no longer counts once there is a second.
        assert!(s.record_inference(ms(20)));
        assert_eq!(s.inference_estimate(), Some(ms(20)));
        s.announced_inference = s.inference_estimate();
        assert!(!s.record_inference(ms(22)));
        assert!(s.record_inference(ms(80)));
        assert_eq!(s.batches, 4);
    }

    #[test]
    fn conversion_is_averaged_over_the_frames_in_and_out() {
        let mut s = Stats::<()>::default();
        assert_eq!(s.conversion_estimate(), gst::ClockTime::ZERO);
        s.frames_in = 4;
        s.input_work = Duration::from_millis(8);
        s.frames_out = 2;
        s.output_work = Duration::from_millis(6);
        assert_eq!(s.conversion_estimate(), gst::ClockTime::from_mseconds(5));
    }

    #[test]
    fn stats_are_due_after_the_interval_or_when_forced() {
        let mut s = Stats::<()>::started("CPU", 1, 0);
        assert!(!s.post_due(60_000, false));
        assert!(!s.post_due(0, false));
        assert!(s.post_due(0, true));
        s.last_posted = Some(Instant::now() - Duration::from_millis(50));
        assert!(s.post_due(10, false));
        assert!(!s.post_due(10, false));
    }
}
