// SPDX-License-Identifier: MPL-2.0
//! The collector's reorder buffer with a fixed playout delay, free of sockets and GStreamer.
//!
//! Frame `i`, which entered the primary at `timestamp_i`, is played at
//! `timestamp_i + delay`: the output keeps the source's pacing, shifted by a constant. A
//! frame that arrives after its play time is dropped and counted as late; a frame that
//! has not arrived when a later one is played is skipped and counted as missing. Played
//! indices strictly increase. A frame never waits longer than `delay` (plus the start lag,
//! below) after its arrival, so a sender whose clock runs ahead cannot stall the output.
//!
//! The buffer holds at most `max_frames`; what happens to a frame that finds it full is the
//! [`FullPolicy`]: play the oldest early (nothing lost, the pacing breaks) or drop the
//! oldest or the arriving frame (the pacing holds, the drop is counted).
//!
//! Start: before the first frame of a stream is played, nothing has been shown, so the
//! whole schedule may still move. With [`LateStart::Shift`] a result that comes later than
//! its play time then moves every play time back (the *start lag*) instead of being
//! dropped: a worker waiting for its settings, loading or warming up its model costs
//! latency once, not frames. With [`LateStart::Drop`] such a frame is late like any other
//! (live input, where latency matters more than the first frames). Frames of the stream
//! that never arrived before the first one played are counted as missing from the
//! stream's first index ([`Playout::set_start`]), when it is known.
//!
//! Times are microseconds since the Unix epoch, passed in by the caller.

use std::collections::BTreeMap;

/// What to do when a frame arrives and `max_frames` are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullPolicy {
    /// Keep it and play the oldest held frames at once, before their time, until the
    /// buffer is back within its bound (counted as `overflow`): no frame is lost, but the
    /// output leaves the source's pacing.
    PlayEarly,
    /// Drop the oldest frame (the next to play; the arriving one when it comes before all
    /// held) to make room (counted as `dropped`): every frame played keeps its time.
    DropOldest,
    /// Drop the arriving frame (counted as `dropped`): the held frames keep their places
    /// and their times.
    DropNewest,
}

/// What a result that comes after its play time does before the first frame was played.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LateStart {
    /// Move the whole schedule back so that it is on time, with a quarter of the delay to
    /// spare for frames still on their way ([`START_MARGIN_DIVISOR`]).
    Shift,
    /// Drop it as late.
    Drop,
}

/// The margin a start shift leaves: the playout delay divided by this.
pub const START_MARGIN_DIVISOR: i64 = 4;

/// What became of an arriving frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Held until its play time.
    Held,
    /// Arrived after its play time, or after a later frame was played: dropped.
    Late,
    /// Already held: dropped.
    Duplicate,
    /// The buffer was full and the policy dropped this frame.
    Dropped,
    /// Its index is below what was played although it is newer than anything played: the
    /// source restarted its count. Frames held from before were discarded; this one is held.
    Restarted,
}

/// A frame leaving the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released<P> {
    pub index: u64,
    pub timestamp_ms: i64,
    pub payload: P,
    /// Indices skipped just before this one (never arrived in time).
    pub skipped: u64,
    /// When it was due (µs since the epoch).
    pub due_us: i64,
}

/// Counters since start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlayoutStats {
    pub received: u64,
    pub released: u64,
    pub late: u64,
    pub duplicates: u64,
    pub missing: u64,
    /// Frames played before their time because the buffer was full ([`FullPolicy::PlayEarly`]).
    pub overflow: u64,
    /// Frames dropped because the buffer was full ([`FullPolicy::DropOldest`],
    /// [`FullPolicy::DropNewest`]); the gaps they leave are counted as `missing` too.
    pub dropped: u64,
    pub restarts: u64,
    /// Frames discarded at a restart.
    pub discarded: u64,
    /// How far (µs) the schedule of the current stream was moved back at its start
    /// ([`LateStart::Shift`]).
    pub start_lag_us: i64,
}

#[derive(Debug)]
struct Held<P> {
    timestamp_ms: i64,
    arrival_us: i64,
    payload: P,
}

#[derive(Debug)]
pub struct Playout<P> {
    delay_us: i64,
    max_frames: usize,
    policy: FullPolicy,
    late_start: LateStart,
    frames: BTreeMap<u64, Held<P>>,
    next: Option<u64>,
    /// The stream's first index, when the sender told us (the dispatcher's first frame).
    start: Option<u64>,
    last_timestamp_ms: Option<i64>,
    stats: PlayoutStats,
}

impl<P> Playout<P> {
    pub fn new(delay_us: i64, max_frames: usize, policy: FullPolicy) -> Self {
        Playout {
            delay_us: delay_us.max(0),
            max_frames: max_frames.max(1),
            policy,
            late_start: LateStart::Shift,
            frames: BTreeMap::new(),
            next: None,
            start: None,
            last_timestamp_ms: None,
            stats: PlayoutStats::default(),
        }
    }

    pub fn set_delay(&mut self, delay_us: i64) {
        self.delay_us = delay_us.max(0);
    }

    pub fn set_max_frames(&mut self, max_frames: usize) {
        self.max_frames = max_frames.max(1);
        self.trim();
    }

    pub fn set_policy(&mut self, policy: FullPolicy) {
        self.policy = policy;
        self.trim();
    }

    pub fn set_late_start(&mut self, late_start: LateStart) {
        self.late_start = late_start;
    }

    /// The first index of the stream (frames below it were never sent), or `None` when
    /// unknown: then counting starts at the first frame played.
    pub fn set_start(&mut self, start: Option<u64>) {
        self.start = start;
    }

    /// Whether a frame of this stream was played: from then on the schedule is fixed.
    pub fn started(&self) -> bool {
        self.next.is_some()
    }

    /// Where counting starts: after the last played frame, else at the stream's first index.
    fn counted_from(&self) -> Option<u64> {
        self.next.or(self.start)
    }

    /// Brings a buffer over its bound (after the bound or the policy changed) back within
    /// it as the policy says; [`FullPolicy::PlayEarly`] does it in [`Playout::pop_due`].
    fn trim(&mut self) {
        let excess = self.frames.len().saturating_sub(self.max_frames);
        for _ in 0..excess {
            match self.policy {
                FullPolicy::PlayEarly => return,
                FullPolicy::DropOldest => self.frames.pop_first(),
                FullPolicy::DropNewest => self.frames.pop_last(),
            };
            self.stats.dropped += 1;
        }
    }

    pub fn stats(&self) -> &PlayoutStats {
        &self.stats
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The next index to play (all below it were played or skipped), once anything was played.
    pub fn next_index(&self) -> Option<u64> {
        self.next
    }

    pub fn holds(&self, index: u64) -> bool {
        self.frames.contains_key(&index)
    }

    /// When a frame that entered at `timestamp_ms` plays: its entry time plus the delay and
    /// the start lag; never more than that after its arrival (a sender's clock ahead).
    fn due(&self, timestamp_ms: i64, arrival_us: i64) -> i64 {
        timestamp_ms
            .saturating_mul(1000)
            .min(arrival_us)
            .saturating_add(self.delay_us)
            .saturating_add(self.stats.start_lag_us)
    }

    /// When a frame that entered at `timestamp_ms` is due, wherever it is.
    pub fn play_time_us(&self, timestamp_ms: i64) -> i64 {
        timestamp_ms
            .saturating_mul(1000)
            .saturating_add(self.delay_us)
            .saturating_add(self.stats.start_lag_us)
    }

    pub fn insert(&mut self, index: u64, timestamp_ms: i64, payload: P, now_us: i64) -> Arrival {
        self.stats.received += 1;
        let mut outcome = Arrival::Held;
        if self.next.is_some_and(|next| index < next) {
            if self
                .last_timestamp_ms
                .is_some_and(|last| timestamp_ms > last)
            {
                self.stats.restarts += 1;
                self.stats.discarded += self.frames.len() as u64;
                self.frames.clear();
                self.next = None;
                self.start = None;
                self.stats.start_lag_us = 0;
                self.last_timestamp_ms = None;
                outcome = Arrival::Restarted;
            } else {
                self.stats.late += 1;
                return Arrival::Late;
            }
        }
        let due_us = self.play_time_us(timestamp_ms);
        if now_us > due_us && self.next.is_none() && self.late_start == LateStart::Shift {
            // Nothing played yet: move the schedule back rather than lose the frame.
            let margin = self.delay_us / START_MARGIN_DIVISOR;
            self.stats.start_lag_us += now_us - due_us + margin;
        } else if now_us > due_us {
            self.stats.late += 1;
            return Arrival::Late;
        }
        if self.frames.contains_key(&index) {
            self.stats.duplicates += 1;
            return Arrival::Duplicate;
        }
        if self.frames.len() >= self.max_frames {
            let before_all = self
                .frames
                .first_key_value()
                .is_some_and(|(&first, _)| index < first);
            match self.policy {
                FullPolicy::PlayEarly => {}
                FullPolicy::DropOldest if !before_all => {
                    self.frames.pop_first();
                    self.stats.dropped += 1;
                }
                FullPolicy::DropOldest | FullPolicy::DropNewest => {
                    self.stats.dropped += 1;
                    return Arrival::Dropped;
                }
            }
        }
        self.frames.insert(
            index,
            Held {
                timestamp_ms,
                arrival_us: now_us,
                payload,
            },
        );
        outcome
    }

    /// When the first held frame is due (µs), or now if the buffer is over its bound.
    pub fn next_due(&self, now_us: i64) -> Option<i64> {
        let (_, head) = self.frames.first_key_value()?;
        if self.frames.len() > self.max_frames {
            return Some(now_us);
        }
        Some(self.due(head.timestamp_ms, head.arrival_us))
    }

    /// The first held frame if it is due.
    pub fn pop_due(&mut self, now_us: i64) -> Option<Released<P>> {
        let due = self.next_due(now_us)?;
        if now_us < due {
            return None;
        }
        let forced = self.frames.len() > self.max_frames;
        let (index, held) = self.frames.pop_first()?;
        if forced {
            self.stats.overflow += 1;
        }
        let skipped = self
            .counted_from()
            .map(|next| index.saturating_sub(next))
            .unwrap_or(0);
        self.stats.missing += skipped;
        self.stats.released += 1;
        self.next = Some(index + 1);
        self.last_timestamp_ms = Some(held.timestamp_ms);
        Some(Released {
            index,
            timestamp_ms: held.timestamp_ms,
            payload: held.payload,
            skipped,
            due_us: due,
        })
    }

    /// Gives up on every index up to and including `last` that has not been played
    /// (the input ended and they cannot come any more); returns how many were skipped.
    pub fn skip_through(&mut self, last: u64) -> u64 {
        let Some(next) = self.counted_from() else {
            return 0;
        };
        if last < next {
            return 0;
        }
        let skipped = last + 1 - next;
        self.stats.missing += skipped;
        self.next = Some(last + 1);
        skipped
    }

    /// Forgets the held frames and the position (flush).
    pub fn clear(&mut self) {
        self.frames.clear();
        self.next = None;
        self.start = None;
        self.stats.start_lag_us = 0;
        self.last_timestamp_ms = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: i64 = 500_000; // 500 ms

    /// Frame i entered at 1000 s + i * 40 ms.
    fn ts(i: u64) -> i64 {
        1_000_000 + i as i64 * 40
    }

    fn us(ms: i64) -> i64 {
        ms * 1000
    }

    #[test]
    fn out_of_order_frames_play_in_order_at_their_time_plus_delay() {
        let mut p = Playout::new(D, 64, FullPolicy::PlayEarly);
        let now = us(ts(3)) + 100_000;
        for i in [2u64, 0, 3, 1] {
            assert_eq!(p.insert(i, ts(i), i, now), Arrival::Held);
        }
        assert_eq!(p.next_due(now), Some(us(ts(0)) + D));
        assert_eq!(p.pop_due(us(ts(0)) + D - 1), None);
        let mut played = Vec::new();
        let mut t = now;
        while !p.is_empty() {
            t = p.next_due(t).unwrap();
            let r = p.pop_due(t).unwrap();
            assert_eq!(r.due_us, us(ts(r.index)) + D, "source pacing kept");
            assert_eq!(r.skipped, 0);
            played.push(r.index);
        }
        assert_eq!(played, vec![0, 1, 2, 3]);
        assert_eq!(p.stats().released, 4);
    }

    #[test]
    fn a_missing_frame_is_skipped_at_the_next_frames_time_and_late_ones_dropped() {
        let mut p = Playout::new(D, 64, FullPolicy::PlayEarly);
        p.insert(0, ts(0), 0, us(ts(0)));
        p.insert(2, ts(2), 2, us(ts(2)));
        assert_eq!(p.pop_due(us(ts(0)) + D).unwrap().index, 0);
        // Frame 1 never comes: frame 2 plays at its own time, 1 counts as missing.
        let r = p.pop_due(us(ts(2)) + D).unwrap();
        assert_eq!((r.index, r.skipped), (2, 1));
        assert_eq!(p.stats().missing, 1);
        // It shows up afterwards: late, dropped.
        assert_eq!(p.insert(1, ts(1), 1, us(ts(2)) + D + 1), Arrival::Late);
        // A frame arriving after its own play time is late too, even if nothing passed it.
        assert_eq!(p.insert(3, ts(3), 3, us(ts(3)) + D + 1), Arrival::Late);
        assert_eq!(p.stats().late, 2);
        assert_eq!(p.next_index(), Some(3));
    }

    #[test]
    fn duplicates_are_dropped() {
        let mut p = Playout::new(D, 64, FullPolicy::PlayEarly);
        assert_eq!(p.insert(5, ts(5), 'a', us(ts(5))), Arrival::Held);
        assert_eq!(p.insert(5, ts(5), 'b', us(ts(5))), Arrival::Duplicate);
        let r = p.pop_due(us(ts(5)) + D).unwrap();
        assert_eq!(r.payload, 'a');
        assert_eq!(p.insert(5, ts(5), 'c', us(ts(5)) + 10), Arrival::Late);
        assert_eq!(p.stats().duplicates, 1);
    }

    #[test]
    fn a_clock_ahead_cannot_hold_a_frame_longer_than_the_delay() {
        let mut p = Playout::new(D, 64, FullPolicy::PlayEarly);
        let now = 5_000_000_000;
        // Stamped an hour in the future by a sender with a wrong clock.
        p.insert(0, now / 1000 + 3_600_000, 0, now);
        assert_eq!(p.next_due(now), Some(now + D));
    }

    #[test]
    fn a_full_buffer_plays_early_instead_of_growing() {
        let mut p = Playout::new(D, 4, FullPolicy::PlayEarly);
        let now = us(ts(0));
        for i in 0..6 {
            p.insert(i, ts(i), i, now);
        }
        assert_eq!(p.pop_due(now).unwrap().index, 0);
        assert_eq!(p.pop_due(now).unwrap().index, 1);
        assert_eq!(p.pop_due(now), None, "back within bound: wait again");
        assert_eq!(p.stats().overflow, 2);
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_and_keeps_the_pacing() {
        let mut p = Playout::new(D, 4, FullPolicy::DropOldest);
        p.insert(0, ts(0), 0, us(ts(0)));
        let now = us(ts(0)) + D;
        assert_eq!(p.pop_due(now).unwrap().index, 0);
        // A window of 6 arrives at once.
        for i in 1..7 {
            assert_eq!(p.insert(i, ts(i), i, now), Arrival::Held);
        }
        assert_eq!(p.len(), 4);
        assert_eq!(p.stats().dropped, 2);
        assert_eq!(p.pop_due(now), None, "nothing plays before its time");
        let r = p.pop_due(us(ts(3)) + D).unwrap();
        assert_eq!((r.index, r.skipped, r.due_us), (3, 2, us(ts(3)) + D));
        assert_eq!(p.stats().missing, 2, "the dropped frames are gaps");
        assert_eq!(p.stats().overflow, 0);
        // A straggler from before everything held is the oldest: it is the one dropped.
        let mut q = Playout::new(D, 2, FullPolicy::DropOldest);
        q.insert(5, ts(5), 5, now);
        q.insert(6, ts(6), 6, now);
        assert_eq!(q.insert(4, ts(4), 4, now), Arrival::Dropped);
        assert!(q.holds(5) && q.holds(6));
        assert_eq!(q.stats().dropped, 1);
    }

    #[test]
    fn a_full_buffer_drops_the_arriving_frame_with_drop_newest() {
        let mut p = Playout::new(D, 4, FullPolicy::DropNewest);
        let now = us(ts(5));
        let outcomes: Vec<Arrival> = (0..6).map(|i| p.insert(i, ts(i), i, now)).collect();
        assert_eq!(&outcomes[4..], &[Arrival::Dropped, Arrival::Dropped]);
        assert!((0..4).all(|i| p.holds(i)));
        assert_eq!(p.stats().dropped, 2);
        for i in 0..4 {
            let r = p.pop_due(us(ts(i)) + D).unwrap();
            assert_eq!((r.index, r.due_us), (i, us(ts(i)) + D));
        }
    }

    #[test]
    fn a_smaller_bound_is_applied_by_the_policy() {
        let now = us(ts(0));
        let mut p = Playout::new(D, 8, FullPolicy::DropNewest);
        for i in 0..6 {
            p.insert(i, ts(i), i, now);
        }
        p.set_max_frames(4);
        assert!(p.holds(3) && !p.holds(4) && !p.holds(5));
        p.set_policy(FullPolicy::DropOldest);
        p.set_max_frames(2);
        assert!(p.holds(2) && p.holds(3) && !p.holds(1));
        assert_eq!(p.stats().dropped, 4);
        p.set_policy(FullPolicy::PlayEarly);
        p.set_max_frames(1);
        assert_eq!(
            p.pop_due(now).unwrap().index,
            2,
            "over the bound: plays early"
        );
        assert_eq!(p.stats().overflow, 1);
    }

    #[test]
    fn a_restarted_source_is_followed() {
        let mut p = Playout::new(D, 64, FullPolicy::PlayEarly);
        p.insert(100, ts(100), 100, us(ts(100)));
        p.insert(101, ts(101), 101, us(ts(101)));
        assert_eq!(p.pop_due(us(ts(100)) + D).unwrap().index, 100);
        // The primary restarted: index 0 again, but stamped after what was played.
        assert_eq!(p.insert(0, ts(200), 0, us(ts(200))), Arrival::Restarted);
        assert_eq!(p.stats().discarded, 1);
        assert_eq!(p.pop_due(us(ts(200)) + D).unwrap().index, 0);
        assert_eq!(p.stats().restarts, 1);
    }

    #[test]
    fn a_late_start_moves_the_schedule_back_instead_of_dropping() {
        let mut p = Playout::new(D, 64, FullPolicy::PlayEarly);
        p.set_start(Some(0));
        // The worker waited 3 s for its settings: frame 0 comes 3 s after its play time.
        let t = us(ts(0)) + D + 3_000_000;
        assert_eq!(p.insert(0, ts(0), 0, t), Arrival::Held);
        let lag = p.stats().start_lag_us;
        assert_eq!(lag, 3_000_000 + D / START_MARGIN_DIVISOR);
        assert_eq!(p.stats().late, 0);
        // Its backlog follows at once: frame 1 entered 40 ms later, so it is on time.
        assert_eq!(p.insert(1, ts(1), 1, t + 1_000), Arrival::Held);
        // Frame 2 is slower still but nothing has played: the schedule moves again.
        let t2 = us(ts(2)) + D + lag + 50_000;
        assert_eq!(p.insert(2, ts(2), 2, t2), Arrival::Held);
        let lag = p.stats().start_lag_us;
        assert!(lag > 3_000_000 + D / START_MARGIN_DIVISOR);
        // A frame that entered after the wait comes back quickly: it keeps the shifted
        // schedule too, so the output does not bunch up where the backlog ends.
        let ts9 = ts(2) + 3_000;
        assert_eq!(p.insert(9, ts9, 9, us(ts9) + 20_000), Arrival::Held);
        assert_eq!(p.next_due(t2), Some(us(ts(0)) + D + lag));
        for i in 0..3 {
            let due = us(ts(i)) + D + lag;
            assert_eq!(p.pop_due(due - 1).map(|r| r.index), None, "frame {i}");
            let r = p.pop_due(due).unwrap();
            assert_eq!((r.index, r.skipped, r.due_us), (i, 0, due), "pacing kept");
        }
        let r = p.pop_due(us(ts9) + D + lag).unwrap();
        assert_eq!((r.index, r.skipped), (9, 6));
        // Once a frame played, the schedule is fixed: later is late.
        let t3 = us(ts(10)) + D + lag + 1;
        assert_eq!(p.insert(10, ts(10), 10, t3), Arrival::Late);
        assert_eq!(p.stats().start_lag_us, lag);
        assert_eq!(p.stats().late, 1);
    }

    #[test]
    fn a_late_start_is_dropped_when_asked() {
        let mut p = Playout::new(D, 64, FullPolicy::PlayEarly);
        p.set_late_start(LateStart::Drop);
        assert_eq!(p.insert(0, ts(0), 0, us(ts(0)) + D + 1), Arrival::Late);
        assert_eq!(p.stats().start_lag_us, 0);
        assert_eq!(p.stats().late, 1);
    }

    #[test]
    fn frames_before_the_first_played_count_from_the_stream_start() {
        let mut p = Playout::new(D, 64, FullPolicy::PlayEarly);
        p.set_start(Some(0));
        p.insert(61, ts(61), 61, us(ts(61)));
        let r = p.pop_due(us(ts(61)) + D).unwrap();
        assert_eq!((r.index, r.skipped), (61, 61));
        assert_eq!(p.stats().missing, 61, "frames 0-60 never came: counted");
        // Unknown start (no dispatcher in this process): counting starts at the first frame.
        let mut q = Playout::new(D, 64, FullPolicy::PlayEarly);
        q.insert(61, ts(61), 61, us(ts(61)));
        assert_eq!(q.pop_due(us(ts(61)) + D).unwrap().skipped, 0);
        // Nothing ever arrived and the input ended: all of it is missing.
        let mut e = Playout::<u64>::new(D, 64, FullPolicy::PlayEarly);
        e.set_start(Some(0));
        assert_eq!(e.skip_through(119), 120);
        assert_eq!(e.stats().missing, 120);
        // A restart forgets the old start and lag.
        p.set_start(Some(0));
        p.clear();
        assert_eq!(p.stats().start_lag_us, 0);
        assert!(!p.started());
    }

    #[test]
    fn skipping_the_tail_after_the_input_ended() {
        let mut p = Playout::new(D, 64, FullPolicy::PlayEarly);
        assert_eq!(p.skip_through(10), 0, "nothing played yet: nothing to skip");
        p.insert(0, ts(0), 0, us(ts(0)));
        p.pop_due(us(ts(0)) + D).unwrap();
        assert_eq!(p.skip_through(3), 3);
        assert_eq!(p.stats().missing, 3);
        assert_eq!(p.next_index(), Some(4));
    }
}
