// SPDX-License-Identifier: MPL-2.0
//! Statistics of a received frame stream, free of sockets and clocks.
//!
//! The receive loop feeds one [`FrameEvent`] per frame (arrival time, latency, index, sizes)
//! and one call per malformed message; [`StreamStats::report`] turns that into a [`Report`]
//! which prints as the human summary or serialises as JSON.

use std::collections::HashSet;
use std::fmt::{self, Write as _};

use serde::Serialize;

/// How many malformed-message errors are kept verbatim for the report.
pub const MAX_MALFORMED_EXAMPLES: usize = 5;
/// How many lost-index ranges the JSON report lists (the count is always complete).
pub const MAX_LOST_RANGES_JSON: usize = 1000;
/// How many lost-index ranges the text report lists.
pub const MAX_LOST_RANGES_TEXT: usize = 20;

/// One received frame.
#[derive(Debug, Clone, Copy)]
pub struct FrameEvent {
    /// Arrival time, seconds since the receiver started.
    pub at_s: f64,
    /// Receive wall-clock time minus the message timestamp, in milliseconds.
    pub latency_ms: f64,
    pub index: u64,
    /// The frame's own timestamp (capture time, ms since the Unix epoch).
    pub timestamp_ms: f64,
    /// Size of the JPEG carried (0 for a batch entry that names a file instead).
    pub jpeg_bytes: usize,
    /// Size of the ZeroMQ message; for batch messages, shared out over its frames.
    pub wire_bytes: usize,
}

/// The limits of the real-time verdict. A rate limit left at `None` is taken from the
/// stream itself: a stream that keeps up with its input (the rate its frame timestamps
/// and indices show) is real-time, whatever that rate is.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Thresholds {
    pub min_fps: Option<f64>,
    pub max_mean_interval_ms: Option<f64>,
    pub max_latency_p95_ms: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            min_fps: None,
            max_mean_interval_ms: None,
            max_latency_p95_ms: 3000.0,
        }
    }
}

/// Rate limits when the input rate cannot be measured (one frame, or no timestamps).
pub const FALLBACK_MIN_FPS: f64 = 22.5;
pub const FALLBACK_MAX_INTERVAL_MS: f64 = 60.0;
/// Keeping up with the input allows the output this much longer than the input took...
pub const KEEP_UP_SLACK: f64 = 0.10;
/// ...plus this much jitter (the first and last frame's delays differ on a busy machine).
pub const KEEP_UP_JITTER_S: f64 = 0.25;
/// A stream whose first frame received is N > 0 lost frames 0..N-1 when, at its own
/// pace, frame 0 would have come at least this long after the receiver started (time for a
/// subscription to reach the sender); earlier, the receiver joined late and counts nothing.
pub const JOIN_MARGIN_S: f64 = 0.5;

/// Accumulates what the receive loop sees.
#[derive(Debug, Default)]
pub struct StreamStats {
    frames: u64,
    messages: u64,
    first_at_s: Option<f64>,
    last_at_s: Option<f64>,
    intervals_ms: Vec<f64>,
    latencies_ms: Vec<f64>,
    wire_bytes: u64,
    jpeg_bytes: u64,
    seen: HashSet<u64>,
    min_index: Option<u64>,
    max_index: Option<u64>,
    out_of_order: u64,
    duplicates: u64,
    malformed: u64,
    malformed_examples: Vec<String>,
    /// The newest frame timestamp seen, and the current run's first and highest frame
    /// (index, timestamp): the input rate is measured on the current run.
    newest_timestamp_ms: Option<f64>,
    run_first: Option<(u64, f64)>,
    run_highest: Option<(u64, f64)>,
    /// Sender restarts seen (indices back to a low value with newer timestamps), and what
    /// the runs before the current one lost.
    restarts: u64,
    lost_before: u64,
    lost_ranges_before: Vec<(u64, u64)>,
}

impl StreamStats {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one ZeroMQ message, well-formed or not.
    pub fn record_message(&mut self) {
        self.messages += 1;
    }

    /// Counts a message that could not be decoded; `error` says why.
    pub fn record_malformed(&mut self, error: &str) {
        self.malformed += 1;
        if self.malformed_examples.len() < MAX_MALFORMED_EXAMPLES {
            self.malformed_examples.push(error.to_owned());
        }
    }

    pub fn record_frame(&mut self, ev: FrameEvent) {
        self.frames += 1;
        if let Some(last) = self.last_at_s {
            self.intervals_ms.push((ev.at_s - last) * 1000.0);
        }
        self.first_at_s.get_or_insert(ev.at_s);
        self.last_at_s = Some(ev.at_s);
        self.latencies_ms.push(ev.latency_ms);
        self.wire_bytes += ev.wire_bytes as u64;
        self.jpeg_bytes += ev.jpeg_bytes as u64;

        // A restarted sender counts from 0 again: an index back to a low value (at most
        // half the highest) on a frame newer than every frame so far is a new run, not a
        // duplicate (a duplicate or a late frame carries its original, older timestamp).
        if let (Some(max), Some(newest)) = (self.max_index, self.newest_timestamp_ms)
            && ev.index <= max / 2
            && ev.timestamp_ms > newest
        {
            self.restarts += 1;
            self.lost_before += self.lost_count();
            self.lost_ranges_before.extend(self.lost_ranges());
            self.seen.clear();
            self.min_index = None;
            self.max_index = None;
            self.run_first = None;
            self.run_highest = None;
        }
        if self.newest_timestamp_ms.is_none_or(|n| ev.timestamp_ms > n) {
            self.newest_timestamp_ms = Some(ev.timestamp_ms);
        }
        self.run_first.get_or_insert((ev.index, ev.timestamp_ms));
        if self.run_highest.is_none_or(|(i, _)| ev.index > i) {
            self.run_highest = Some((ev.index, ev.timestamp_ms));
        }
        // A repeated index is a duplicate, whatever its position; an index below the
        // highest one seen so far that is new is out of order (it may fill a gap).
        if !self.seen.insert(ev.index) {
            self.duplicates += 1;
        } else if self.max_index.is_some_and(|m| ev.index < m) {
            self.out_of_order += 1;
        }
        self.min_index = Some(self.min_index.map_or(ev.index, |m| m.min(ev.index)));
        self.max_index = Some(self.max_index.map_or(ev.index, |m| m.max(ev.index)));
    }

    /// The latency of the latest frame.
    pub fn last_latency_ms(&self) -> Option<f64> {
        self.latencies_ms.last().copied()
    }

    pub fn frames(&self) -> u64 {
        self.frames
    }

    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    pub fn out_of_order(&self) -> u64 {
        self.out_of_order
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    /// The input's frame rate on the current run: index steps over timestamp span.
    pub fn input_fps(&self) -> Option<f64> {
        let ((i0, t0), (i1, t1)) = (self.run_first?, self.run_highest?);
        (i1 > i0 && t1 > t0).then(|| (i1 - i0) as f64 / ((t1 - t0) / 1000.0))
    }

    /// Lost indices of the current run: those between the lowest and highest received
    /// that never came.
    pub fn lost_count(&self) -> u64 {
        match (self.min_index, self.max_index) {
            (Some(lo), Some(hi)) => (hi - lo + 1) - self.seen.len() as u64,
            _ => 0,
        }
    }

    /// Frames 0..N-1 before the first received frame N that the receiver was there for:
    /// at the stream's pace frame 0 would have come after [`JOIN_MARGIN_S`] (first run only;
    /// no count without a measurable rate).
    pub fn lost_before_first(&self) -> u64 {
        let (Some(first_at_s), Some(fps), Some(lo)) =
            (self.first_at_s, self.input_fps(), self.min_index)
        else {
            return 0;
        };
        let Some((first_index, _)) = self.run_first else {
            return 0;
        };
        if self.restarts > 0 || lo == 0 {
            return 0;
        }
        let zero_at_s = first_at_s - first_index as f64 / fps;
        if zero_at_s > JOIN_MARGIN_S { lo } else { 0 }
    }

    /// The gaps in the received indices, as inclusive ranges in ascending order.
    pub fn lost_ranges(&self) -> Vec<(u64, u64)> {
        let mut idx: Vec<u64> = self.seen.iter().copied().collect();
        idx.sort_unstable();
        idx.windows(2)
            .filter(|w| w[1] > w[0] + 1)
            .map(|w| (w[0] + 1, w[1] - 1))
            .collect()
    }

    /// The summary. `wall_s` is how long the receiver ran, `stopped_by` why it stopped.
    pub fn report(&self, thresholds: Thresholds, wall_s: f64, stopped_by: &str) -> Report {
        let duration_s = match (self.first_at_s, self.last_at_s) {
            (Some(a), Some(b)) => b - a,
            _ => 0.0,
        };
        let average_fps =
            (self.frames >= 2 && duration_s > 0.0).then(|| (self.frames - 1) as f64 / duration_s);
        let intervals_ms = IntervalSummary::of(&self.intervals_ms);
        let latency_ms = LatencySummary::of(&self.latencies_ms);
        let lost_before_first = self.lost_before_first();
        let mut lost_ranges = Vec::new();
        if lost_before_first > 0 {
            lost_ranges.push((0, lost_before_first - 1));
        }
        lost_ranges.extend(self.lost_ranges_before.iter().copied());
        lost_ranges.extend(self.lost_ranges());
        let indices = self.max_index.map(|last| IndexSummary {
            first: self.min_index.unwrap_or(last),
            last,
            restarts: self.restarts,
            lost: self.lost_before + self.lost_count() + lost_before_first,
            lost_before_first,
            lost_ranges_truncated: lost_ranges.len() > MAX_LOST_RANGES_JSON,
            lost_ranges: lost_ranges
                .into_iter()
                .take(MAX_LOST_RANGES_JSON)
                .map(|(a, b)| [a, b])
                .collect(),
            out_of_order: self.out_of_order,
            duplicates: self.duplicates,
        });
        let bandwidth_mbps =
            (duration_s > 0.0).then(|| self.wire_bytes as f64 * 8.0 / duration_s / 1e6);
        let input_fps = self.input_fps();
        // Keeping up: the run took at most the input's time, 10 % and 0.25 s more.
        let keep_up_fps = input_fps.and_then(|fps| {
            let (_, t0) = self.run_first?;
            let (_, t1) = self.run_highest?;
            let span_s = (t1 - t0) / 1000.0;
            Some(fps * span_s / (span_s * (1.0 + KEEP_UP_SLACK) + KEEP_UP_JITTER_S))
        });
        let limits = Limits {
            min_fps: thresholds
                .min_fps
                .or(keep_up_fps)
                .unwrap_or(FALLBACK_MIN_FPS),
            max_mean_interval_ms: thresholds
                .max_mean_interval_ms
                .or(keep_up_fps.map(|f| 1000.0 / f))
                .unwrap_or(FALLBACK_MAX_INTERVAL_MS),
            max_latency_p95_ms: thresholds.max_latency_p95_ms,
            from_input: thresholds.min_fps.is_none() && keep_up_fps.is_some(),
        };
        let realtime = Verdict::judge(
            limits,
            average_fps,
            intervals_ms.as_ref().map(|i| i.mean),
            latency_ms.as_ref().map(|l| l.p95),
        );
        Report {
            source: String::new(),
            saved_frames: None,
            stopped_by: stopped_by.to_owned(),
            frames: self.frames,
            messages: self.messages,
            malformed: self.malformed,
            malformed_examples: self.malformed_examples.clone(),
            wall_s,
            duration_s,
            time_to_first_frame_s: self.first_at_s,
            average_fps,
            input_fps,
            intervals_ms,
            latency_ms,
            bytes: self.wire_bytes,
            jpeg_bytes: self.jpeg_bytes,
            average_frame_bytes: (self.frames > 0)
                .then(|| self.jpeg_bytes as f64 / self.frames as f64),
            bandwidth_mbps,
            indices,
            realtime,
        }
    }
}

/// Arithmetic mean; `None` for no data.
pub fn mean(data: &[f64]) -> Option<f64> {
    (!data.is_empty()).then(|| data.iter().sum::<f64>() / data.len() as f64)
}

/// Population standard deviation (divides by n, as numpy's default); `None` for no data.
pub fn std_dev(data: &[f64]) -> Option<f64> {
    let m = mean(data)?;
    Some((data.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / data.len() as f64).sqrt())
}

/// Percentile `p` (0..=100) of already sorted data, interpolating linearly between the two
/// nearest ranks (numpy's default method); `None` for no data.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p.clamp(0.0, 100.0) / 100.0) * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64))
}

fn sorted(data: &[f64]) -> Vec<f64> {
    let mut s = data.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IntervalSummary {
    pub count: usize,
    pub mean: f64,
    pub median: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
}

impl IntervalSummary {
    pub fn of(data: &[f64]) -> Option<Self> {
        let s = sorted(data);
        Some(IntervalSummary {
            count: s.len(),
            mean: mean(&s)?,
            median: percentile_sorted(&s, 50.0)?,
            std: std_dev(&s)?,
            min: *s.first()?,
            max: *s.last()?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: usize,
    pub mean: f64,
    pub min: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl LatencySummary {
    pub fn of(data: &[f64]) -> Option<Self> {
        let s = sorted(data);
        Some(LatencySummary {
            count: s.len(),
            mean: mean(&s)?,
            min: *s.first()?,
            p50: percentile_sorted(&s, 50.0)?,
            p95: percentile_sorted(&s, 95.0)?,
            p99: percentile_sorted(&s, 99.0)?,
            max: *s.last()?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IndexSummary {
    /// Lowest index received.
    pub first: u64,
    /// Highest index received.
    pub last: u64,
    /// Times the sender restarted (its indices began again from a low value); `first`
    /// and `last` are those of the last run, `lost` counts every run.
    pub restarts: u64,
    pub lost: u64,
    /// Of `lost`: frames 0..`first`-1, which the stream had sent while this receiver was
    /// listening ([`StreamStats::lost_before_first`]).
    pub lost_before_first: u64,
    /// Inclusive `[from, to]` ranges of the lost indices, at most [`MAX_LOST_RANGES_JSON`].
    pub lost_ranges: Vec<[u64; 2]>,
    pub lost_ranges_truncated: bool,
    pub out_of_order: u64,
    pub duplicates: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub name: &'static str,
    /// The measured value; `None` when there was not enough data to measure it.
    pub value: Option<f64>,
    pub limit: f64,
    pub ok: bool,
}

/// The limits a verdict was judged by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub min_fps: f64,
    pub max_mean_interval_ms: f64,
    pub max_latency_p95_ms: f64,
    /// The rate limits come from the input rate (no --min-fps given).
    pub from_input: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// True when every check passed.
    pub ok: bool,
    /// The rate limits were taken from the input's own rate (keeping up with it).
    pub judged_by_input_rate: bool,
    pub checks: Vec<Check>,
}

impl Verdict {
    pub fn judge(
        t: Limits,
        fps: Option<f64>,
        mean_interval_ms: Option<f64>,
        latency_p95_ms: Option<f64>,
    ) -> Verdict {
        let at_least = |name, value: Option<f64>, limit: f64| Check {
            name,
            value,
            limit,
            ok: value.is_some_and(|v| v >= limit),
        };
        let at_most = |name, value: Option<f64>, limit: f64| Check {
            name,
            value,
            limit,
            ok: value.is_some_and(|v| v <= limit),
        };
        let checks = vec![
            at_least("fps", fps, t.min_fps),
            at_most("mean_interval_ms", mean_interval_ms, t.max_mean_interval_ms),
            at_most("latency_p95_ms", latency_p95_ms, t.max_latency_p95_ms),
        ];
        Verdict {
            ok: checks.iter().all(|c| c.ok),
            judged_by_input_rate: t.from_input,
            checks,
        }
    }
}

/// Everything the tool reports at the end; the JSON output is this object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Where the frames came from, e.g. `tcp://localhost:5557 (sub, connect)`.
    pub source: String,
    /// JPEGs written with `--save`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saved_frames: Option<u64>,
    /// Why the receiver stopped: frames, duration, timeout or interrupted.
    pub stopped_by: String,
    pub frames: u64,
    pub messages: u64,
    pub malformed: u64,
    pub malformed_examples: Vec<String>,
    /// How long the receiver ran.
    pub wall_s: f64,
    /// From the first frame's arrival to the last one's.
    pub duration_s: f64,
    /// From the receiver's start to the first frame.
    pub time_to_first_frame_s: Option<f64>,
    /// (frames - 1) / duration, i.e. 1000 / mean interval.
    pub average_fps: Option<f64>,
    /// The input's rate on the last run, from the frames' indices and timestamps.
    pub input_fps: Option<f64>,
    pub intervals_ms: Option<IntervalSummary>,
    /// Receive time minus the message timestamp (both wall clock, ms since the Unix epoch).
    pub latency_ms: Option<LatencySummary>,
    /// ZeroMQ message bytes received in frames.
    pub bytes: u64,
    /// JPEG bytes received.
    pub jpeg_bytes: u64,
    pub average_frame_bytes: Option<f64>,
    /// Message bytes over the duration, in 10^6 bits per second.
    pub bandwidth_mbps: Option<f64>,
    pub indices: Option<IndexSummary>,
    pub realtime: Verdict,
}

/// Compact text for index ranges: `4, 10-13, 20-21`, with `(+N more)` past `max`.
pub fn format_ranges(ranges: &[[u64; 2]], max: usize) -> String {
    let mut s = String::new();
    for (i, [a, b]) in ranges.iter().take(max).enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        if a == b {
            let _ = write!(s, "{a}");
        } else {
            let _ = write!(s, "{a}-{b}");
        }
    }
    if ranges.len() > max {
        let _ = write!(s, " (+{} more)", ranges.len() - max);
    }
    s
}

fn human_bytes(b: f64) -> String {
    const KIB: f64 = 1024.0;
    if b >= KIB * KIB * KIB {
        format!("{:.2} GiB", b / (KIB * KIB * KIB))
    } else if b >= KIB * KIB {
        format!("{:.1} MiB", b / (KIB * KIB))
    } else if b >= KIB {
        format!("{:.1} KiB", b / KIB)
    } else {
        format!("{b:.0} B")
    }
}

fn opt(v: Option<f64>, prec: usize, unit: &str) -> String {
    match v {
        Some(v) => format!("{v:.prec$}{unit}"),
        None => "n/a".to_owned(),
    }
}

/// Milliseconds below a second, seconds above.
fn ms_or_s(ms: f64) -> String {
    if ms.abs() < 1000.0 {
        format!("{ms:.1}ms")
    } else {
        format!("{:.2}s", ms / 1000.0)
    }
}

const RULE: &str = "======================================================================";

impl fmt::Display for Report {
    /// The human summary, laid out like the original streaming client's report.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{RULE}")?;
        writeln!(f, "STREAM STATISTICS")?;
        writeln!(f, "{RULE}")?;
        if !self.source.is_empty() {
            writeln!(f, "Source: {}", self.source)?;
        }
        writeln!(f, "Total Frames Received: {}", self.frames)?;
        writeln!(
            f,
            "Total Duration: {:.2}s (first to last frame; ran {:.2}s)",
            self.duration_s, self.wall_s
        )?;
        writeln!(
            f,
            "Time to First Frame: {}",
            opt(self.time_to_first_frame_s, 2, "s")
        )?;
        writeln!(f, "Average FPS: {}", opt(self.average_fps, 1, ""))?;
        writeln!(
            f,
            "Input FPS: {} (from frame indices and timestamps)",
            opt(self.input_fps, 1, "")
        )?;
        writeln!(f, "Total Data: {}", human_bytes(self.bytes as f64))?;
        writeln!(
            f,
            "Average Frame Size: {}",
            self.average_frame_bytes
                .map_or_else(|| "n/a".to_owned(), human_bytes)
        )?;
        writeln!(f, "Bandwidth: {}", opt(self.bandwidth_mbps, 1, " Mbps"))?;
        if let Some(n) = self.saved_frames {
            writeln!(f, "Saved Frames: {n}")?;
        }

        writeln!(f)?;
        writeln!(f, "FRAME INTERVALS:")?;
        match &self.intervals_ms {
            Some(i) => {
                writeln!(f, "  Count: {}", i.count)?;
                writeln!(f, "  Mean: {:.1}ms", i.mean)?;
                writeln!(f, "  Median: {:.1}ms", i.median)?;
                writeln!(f, "  Std Dev: {:.1}ms", i.std)?;
                writeln!(f, "  Min: {:.1}ms", i.min)?;
                writeln!(f, "  Max: {:.1}ms", i.max)?;
            }
            None => writeln!(f, "  n/a (fewer than 2 frames)")?,
        }

        writeln!(f)?;
        writeln!(f, "LATENCY (receive time - frame timestamp):")?;
        match &self.latency_ms {
            Some(l) => {
                writeln!(f, "  Mean: {:.1}ms", l.mean)?;
                writeln!(f, "  P50: {:.1}ms", l.p50)?;
                writeln!(f, "  P95: {:.1}ms", l.p95)?;
                writeln!(f, "  P99: {:.1}ms", l.p99)?;
                writeln!(f, "  Max: {:.1}ms", l.max)?;
            }
            None => writeln!(f, "  n/a (no frames)")?,
        }

        writeln!(f)?;
        writeln!(f, "FRAME INDICES:")?;
        match &self.indices {
            Some(ix) => {
                if ix.restarts > 0 {
                    writeln!(
                        f,
                        "  Sender restarts: {} (indices began again from a low value with newer timestamps)",
                        ix.restarts
                    )?;
                }
                writeln!(f, "  Range: {} to {}", ix.first, ix.last)?;
                if ix.lost == 0 {
                    writeln!(f, "  Lost: 0")?;
                } else {
                    writeln!(
                        f,
                        "  Lost: {} ({})",
                        ix.lost,
                        format_ranges(&ix.lost_ranges, MAX_LOST_RANGES_TEXT)
                    )?;
                    if ix.lost_before_first > 0 {
                        writeln!(
                            f,
                            "    of which {} before the first frame received (0-{}): sent while this receiver was listening",
                            ix.lost_before_first,
                            ix.lost_before_first - 1
                        )?;
                    }
                }
                writeln!(f, "  Out of Order: {}", ix.out_of_order)?;
                writeln!(f, "  Duplicates: {}", ix.duplicates)?;
            }
            None => writeln!(f, "  n/a (no frames)")?,
        }
        writeln!(f, "  Malformed Messages: {}", self.malformed)?;
        for e in &self.malformed_examples {
            writeln!(f, "    - {e}")?;
        }

        writeln!(f)?;
        if self.realtime.judged_by_input_rate {
            writeln!(
                f,
                "REAL-TIME SUITABILITY: keeping up with the input's {} fps",
                opt(self.input_fps, 1, "")
            )?;
        } else {
            writeln!(f, "REAL-TIME SUITABILITY:")?;
        }
        for c in &self.realtime.checks {
            let mark = if c.ok { "✅" } else { "❌" };
            let line = match (c.name, c.value) {
                ("fps", Some(v)) => format!(
                    "Frame rate {} for real-time ({v:.1} {} {:.1} FPS)",
                    if c.ok { "suitable" } else { "too low" },
                    if c.ok { ">=" } else { "<" },
                    c.limit
                ),
                ("mean_interval_ms", Some(v)) => format!(
                    "Frame intervals {} ({v:.1}ms {} {:.1}ms)",
                    if c.ok { "consistent" } else { "too long" },
                    if c.ok { "<=" } else { ">" },
                    c.limit
                ),
                ("latency_p95_ms", Some(v)) => format!(
                    "Latency {} (p95 {} {} {})",
                    if c.ok { "acceptable" } else { "too high" },
                    ms_or_s(v),
                    if c.ok { "<=" } else { ">" },
                    ms_or_s(c.limit)
                ),
                (name, _) => format!("{name}: not enough frames to measure"),
            };
            writeln!(f, "{mark} {line}")?;
        }
        writeln!(
            f,
            "Verdict: {}",
            if self.realtime.ok {
                "REAL-TIME"
            } else {
                "NOT REAL-TIME"
            }
        )?;
        writeln!(f, "{RULE}")?;
        write!(f, "Stopped by: {}", self.stopped_by)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let s = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0];
        // numpy.percentile(range(1, 11), [0, 50, 95, 99, 100]) = [1, 5.5, 9.55, 9.91, 10]
        assert!(close(percentile_sorted(&s, 0.0).unwrap(), 1.0));
        assert!(close(percentile_sorted(&s, 50.0).unwrap(), 5.5));
        assert!(close(percentile_sorted(&s, 95.0).unwrap(), 9.55));
        assert!(close(percentile_sorted(&s, 99.0).unwrap(), 9.91));
        assert!(close(percentile_sorted(&s, 100.0).unwrap(), 10.0));
        assert!(close(percentile_sorted(&[42.0], 95.0).unwrap(), 42.0));
        assert_eq!(percentile_sorted(&[], 50.0), None);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        let odd = IntervalSummary::of(&[5.0, 1.0, 3.0]).unwrap();
        assert!(close(odd.median, 3.0));
        let even = IntervalSummary::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert!(close(even.median, 2.5));
        assert!(close(even.min, 1.0) && close(even.max, 4.0));
        assert_eq!(even.count, 4);
    }

    #[test]
    fn mean_and_std_on_known_data() {
        let d = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        assert!(close(mean(&d).unwrap(), 5.0));
        assert!(close(std_dev(&d).unwrap(), 2.0));
        assert!(close(std_dev(&[3.0]).unwrap(), 0.0));
        assert_eq!(mean(&[]), None);
        assert_eq!(std_dev(&[]), None);
    }

    #[test]
    fn latency_summary_on_known_data() {
        let d: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let l = LatencySummary::of(&d).unwrap();
        assert!(close(l.mean, 50.5));
        assert!(close(l.p50, 50.5));
        assert!(close(l.p95, 95.05));
        assert!(close(l.p99, 99.01));
        assert!(close(l.max, 100.0) && close(l.min, 1.0));
    }

    /// Frames arrive every `period_s`; each carries its capture time (one period per index).
    fn feed(stats: &mut StreamStats, indices: &[u64], period_s: f64, latency_ms: f64) {
        for (k, &index) in indices.iter().enumerate() {
            stats.record_message();
            stats.record_frame(FrameEvent {
                at_s: 1.0 + k as f64 * period_s,
                latency_ms,
                index,
                timestamp_ms: 1000.0 + index as f64 * period_s * 1000.0,
                jpeg_bytes: 1000,
                wire_bytes: 1010,
            });
        }
    }

    #[test]
    fn frames_before_the_first_are_lost_only_when_the_receiver_was_there() {
        let period = 1.0 / 15.0;
        let run = |first_at_s: f64| {
            let mut s = StreamStats::new();
            for (k, index) in (60u64..120).enumerate() {
                s.record_frame(FrameEvent {
                    at_s: first_at_s + k as f64 * period,
                    latency_ms: 1000.0,
                    index,
                    timestamp_ms: 1000.0 + index as f64 * period * 1000.0,
                    jpeg_bytes: 1000,
                    wire_bytes: 1010,
                });
            }
            s.report(Thresholds::default(), 10.0, "frames")
                .indices
                .unwrap()
        };
        // Listening 6 s before frame 60 came: frame 0 was due 2 s after the start.
        let ix = run(6.0);
        assert_eq!((ix.lost, ix.lost_before_first), (60, 60));
        assert_eq!(ix.lost_ranges, vec![[0, 59]]);
        // Frame 60 came 1 s after the start: the receiver joined a running stream.
        let ix = run(1.0);
        assert_eq!((ix.lost, ix.lost_before_first), (0, 0));
        assert!(ix.lost_ranges.is_empty());
    }

    #[test]
    fn gaps_out_of_order_and_duplicates() {
        let mut s = StreamStats::new();
        // 4 and 10..=13 never come; 5 comes late (out of order); 8 and 2 repeat.
        feed(
            &mut s,
            &[0, 1, 2, 3, 6, 7, 5, 8, 8, 9, 2, 14, 15],
            0.04,
            100.0,
        );
        assert_eq!(s.frames(), 13);
        assert_eq!(s.lost_count(), 5);
        assert_eq!(s.lost_ranges(), vec![(4, 4), (10, 13)]);
        assert_eq!(s.out_of_order(), 1);
        assert_eq!(s.duplicates(), 2);
        let r = s.report(Thresholds::default(), 2.0, "frames");
        let ix = r.indices.as_ref().unwrap();
        assert_eq!((ix.first, ix.last), (0, 15));
        assert_eq!(ix.lost_ranges, vec![[4, 4], [10, 13]]);
        assert_eq!(format_ranges(&ix.lost_ranges, 20), "4, 10-13");
        assert_eq!(format_ranges(&ix.lost_ranges, 1), "4 (+1 more)");
    }

    #[test]
    fn stream_not_starting_at_zero_has_no_false_losses() {
        let mut s = StreamStats::new();
        feed(&mut s, &[1000, 1001, 1002], 0.04, 10.0);
        assert_eq!(s.lost_count(), 0);
        assert!(s.lost_ranges().is_empty());
    }

    #[test]
    fn report_rates_sizes_and_verdict() {
        let mut s = StreamStats::new();
        let idx: Vec<u64> = (0..31).collect();
        feed(&mut s, &idx, 0.04, 120.0);
        s.record_message();
        s.record_malformed("not a msgpack message");
        let r = s.report(Thresholds::default(), 1.5, "frames");
        assert_eq!(r.frames, 31);
        assert_eq!(r.messages, 32);
        assert_eq!(r.malformed, 1);
        assert_eq!(r.malformed_examples, vec!["not a msgpack message"]);
        assert!(close(r.duration_s, 1.2));
        assert!(close(r.time_to_first_frame_s.unwrap(), 1.0));
        assert!(close(r.average_fps.unwrap(), 25.0));
        let i = r.intervals_ms.as_ref().unwrap();
        assert_eq!(i.count, 30);
        assert!((i.mean - 40.0).abs() < 1e-6 && i.std < 1e-6);
        assert!(close(r.latency_ms.as_ref().unwrap().p95, 120.0));
        assert_eq!(r.jpeg_bytes, 31_000);
        assert_eq!(r.bytes, 31 * 1010);
        assert!(close(r.average_frame_bytes.unwrap(), 1000.0));
        assert!(close(
            r.bandwidth_mbps.unwrap(),
            31.0 * 1010.0 * 8.0 / 1.2 / 1e6
        ));
        assert!(r.realtime.ok, "{:?}", r.realtime);

        assert!(close(r.input_fps.unwrap(), 25.0));
        assert!(r.realtime.judged_by_input_rate);

        let strict = Thresholds {
            min_fps: Some(30.0),
            ..Thresholds::default()
        };
        let r = s.report(strict, 1.5, "frames");
        assert!(!r.realtime.ok);
        let failed: Vec<_> = r.realtime.checks.iter().filter(|c| !c.ok).collect();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].name, "fps");
        let text = r.to_string();
        assert!(text.contains("❌ Frame rate too low for real-time (25.0 < 30.0 FPS)"));
        assert!(text.contains("✅ Latency acceptable (p95 120.0ms <= 3.00s)"));
        assert!(text.contains("Verdict: NOT REAL-TIME"));
    }

    #[test]
    fn a_15_fps_stream_that_keeps_up_is_real_time_and_a_slow_one_is_not() {
        // 15 fps in and out for 30 s: real-time, though below the 22.5 fps fallback.
        let mut s = StreamStats::new();
        let idx: Vec<u64> = (0..450).collect();
        feed(&mut s, &idx, 1.0 / 15.0, 80.0);
        let r = s.report(Thresholds::default(), 30.0, "duration");
        assert!(close(r.input_fps.unwrap(), 15.0));
        assert!(r.realtime.ok, "{:?}", r.realtime);
        assert!(
            r.to_string()
                .contains("keeping up with the input's 15.0 fps")
        );
        // Frames made at 15 fps that come out at 10 fps fall behind: not real-time.
        let mut slow = StreamStats::new();
        for index in 0..300u64 {
            slow.record_frame(FrameEvent {
                at_s: index as f64 / 10.0,
                latency_ms: 0.0,
                index,
                timestamp_ms: index as f64 * 1000.0 / 15.0,
                jpeg_bytes: 1,
                wire_bytes: 1,
            });
        }
        let r = slow.report(Thresholds::default(), 30.0, "duration");
        assert!(!r.realtime.ok);
        assert_eq!(r.realtime.checks[0].name, "fps");
        assert!(!r.realtime.checks[0].ok);
    }

    #[test]
    fn a_restarted_sender_is_a_restart_not_duplicates() {
        let mut s = StreamStats::new();
        let frame = |index: u64, timestamp_ms: f64| FrameEvent {
            at_s: timestamp_ms / 1000.0,
            latency_ms: 0.0,
            index,
            timestamp_ms,
            jpeg_bytes: 1,
            wire_bytes: 1,
        };
        for i in 0..300u64 {
            s.record_frame(frame(i, i as f64 * 40.0));
        }
        // A late copy of frame 7 (its own old timestamp) is a duplicate...
        s.record_frame(frame(7, 7.0 * 40.0));
        assert_eq!((s.duplicates(), s.restarts()), (1, 0));
        // ...the sender starting over at 0 after a pause is a restart.
        for i in 0..200u64 {
            s.record_frame(frame(i, 20_000.0 + i as f64 * 40.0));
        }
        assert_eq!((s.duplicates(), s.restarts()), (1, 1));
        let r = s.report(Thresholds::default(), 30.0, "duration");
        let ix = r.indices.unwrap();
        assert_eq!((ix.first, ix.last, ix.restarts, ix.lost), (0, 199, 1, 0));
        assert!(close(r.input_fps.unwrap(), 25.0));
    }

    #[test]
    fn empty_stream_fails_the_verdict_without_panicking() {
        let s = StreamStats::new();
        let r = s.report(Thresholds::default(), 10.0, "timeout");
        assert_eq!(r.frames, 0);
        assert!(r.average_fps.is_none() && r.latency_ms.is_none() && r.indices.is_none());
        assert!(!r.realtime.ok);
        assert!(r.realtime.checks.iter().all(|c| c.value.is_none() && !c.ok));
        let text = r.to_string();
        assert!(text.contains("Average FPS: n/a"));
        assert!(text.contains("fps: not enough frames to measure"));
        // The JSON form carries nulls, not a failure.
        let json = serde_json::to_value(&r).unwrap();
        assert!(json["average_fps"].is_null());
        assert_eq!(json["realtime"]["ok"], false);
    }

    #[test]
    fn malformed_examples_are_bounded() {
        let mut s = StreamStats::new();
        for i in 0..50 {
            s.record_malformed(&format!("bad {i}"));
        }
        assert_eq!(s.malformed(), 50);
        let r = s.report(Thresholds::default(), 1.0, "timeout");
        assert_eq!(r.malformed_examples.len(), MAX_MALFORMED_EXAMPLES);
    }
}
