// SPDX-License-Identifier: MPL-2.0
//! The dispatcher's bookkeeping, free of sockets and GStreamer: the bounded queue of frames
//! waiting for a worker, the workers with their credits, the choice of the next free
//! worker, and what happens to a worker's frames when it leaves or dies.
//!
//! Load balancing follows the ZeroMQ "load-balancing broker": a worker asks for frames
//! (its credit) when it has room, and a frame goes to the worker that has been waiting
//! longest. A worker that is busy asks for nothing and gets nothing, so a fast worker
//! never waits behind a slow one. A worker with a batch size gets consecutive frames until
//! its batch is full before the next worker is served.
//!
//! Time is passed in (`now`), so the behaviour is testable without sleeping.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::wire::Ready;

/// What to do with a new frame when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueuePolicy {
    /// Refuse it: the caller waits for room (backpressure, for files).
    Block,
    /// Drop the oldest queued frame to make room (live sources stay current).
    DropOldest,
}

/// One frame on its way to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<P> {
    pub index: u64,
    pub timestamp_ms: i64,
    pub payload: P,
}

/// Frames to send to one worker as one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job<P> {
    pub worker: Vec<u8>,
    pub frames: Vec<Frame<P>>,
}

/// What the caller should send back after a worker's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    None,
    /// Send this worker a heartbeat with our session: it does not know it yet.
    Heartbeat,
}

/// Why a worker was removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// It said bye after finishing its frames.
    Left,
    /// Silent for longer than the worker timeout.
    TimedOut,
    /// Its connection is gone (a send failed with "host unreachable").
    Unreachable,
}

/// The outcome of a worker's removal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    pub name: String,
    pub why: Departure,
    /// Frames it had and that went back to the queue for another worker.
    pub redispatched: u64,
    /// Frames it had taken into its pipeline that cannot be re-sent (no progress record,
    /// or the record keeps no more of them): they are lost unless it delivered them.
    pub unaccounted: u64,
}

/// Most frames remembered per worker after it took them into its pipeline.
pub const MAX_TRACKED_PER_WORKER: usize = 256;

#[derive(Debug)]
struct Sent<P> {
    /// Position of the frame in the frames sent to this worker during the session.
    seq: u64,
    frame: Frame<P>,
}

#[derive(Debug)]
struct Worker<P> {
    id: Vec<u8>,
    name: String,
    batch: u64,
    /// The worker's ready messages refer to our session.
    in_session: bool,
    credit: u64,
    sent: u64,
    taken: u64,
    /// Frames already sent towards the current batch.
    batch_fill: u64,
    last_seen: Instant,
    /// When the worker last went to the back of the line; the smallest is served first.
    ready_since: Instant,
    busy_until: Option<Instant>,
    in_flight: VecDeque<Sent<P>>,
    /// Frames dropped from `in_flight` because it held too many.
    forgotten: u64,
    frames_total: u64,
    /// Frames it took and that the collector played past without them.
    unreturned: u64,
}

impl<P> Worker<P> {
    fn available(&self) -> u64 {
        if self.in_session {
            self.credit.saturating_sub(self.sent)
        } else {
            0
        }
    }
}

/// A snapshot of one worker for the stats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    pub name: String,
    pub batch: u64,
    pub frames: u64,
    pub in_flight: u64,
    pub credit: u64,
    pub idle_ms: u64,
    pub unreturned: u64,
}

/// Counters since start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames accepted into the queue.
    pub queued: u64,
    /// Frames sent to workers (re-sent frames count again).
    pub dispatched: u64,
    /// Job messages sent.
    pub jobs: u64,
    /// Frames dropped by the drop-oldest policy.
    pub dropped: u64,
    /// Frames sent again after their worker left or died.
    pub redispatched: u64,
    /// Frames a lost worker had taken that could not be re-sent.
    pub unaccounted: u64,
    /// Frames a connected worker took and that the collector played past without them
    /// (the worker dropped them, or they came later than the playout delay).
    pub unreturned: u64,
    pub workers_joined: u64,
    pub workers_left: u64,
    pub workers_lost: u64,
}

pub struct Scheduler<P> {
    session: u64,
    queue: VecDeque<Frame<P>>,
    max_queue: usize,
    policy: QueuePolicy,
    worker_timeout: Duration,
    /// Keep frames a worker took into its pipeline until the progress record says they
    /// arrived, so they can be re-sent if it dies (needs a collector in this process).
    track_taken: bool,
    workers: Vec<Worker<P>>,
    stats: Stats,
}

impl<P: Clone> Scheduler<P> {
    pub fn new(
        session: u64,
        max_queue: usize,
        policy: QueuePolicy,
        worker_timeout: Duration,
        track_taken: bool,
    ) -> Self {
        Scheduler {
            session,
            queue: VecDeque::new(),
            max_queue: max_queue.max(1),
            policy,
            worker_timeout,
            track_taken,
            workers: Vec::new(),
            stats: Stats::default(),
        }
    }

    pub fn session(&self) -> u64 {
        self.session
    }

    pub fn set_policy(&mut self, policy: QueuePolicy, max_queue: usize) {
        self.policy = policy;
        self.max_queue = max_queue.max(1);
    }

    pub fn set_worker_timeout(&mut self, timeout: Duration) {
        self.worker_timeout = timeout;
    }

    pub fn set_track_taken(&mut self, track: bool) {
        self.track_taken = track;
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    pub fn has_room(&self) -> bool {
        self.queue.len() < self.max_queue
    }

    /// Frames sent to workers and not yet known to be delivered (or taken, without tracking).
    pub fn in_flight(&self) -> u64 {
        self.workers.iter().map(|w| w.in_flight.len() as u64).sum()
    }

    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// The name a worker gave, and whether it is in our session.
    pub fn worker_name(&self, id: &[u8]) -> Option<(&str, bool)> {
        self.position(id)
            .map(|p| (self.workers[p].name.as_str(), self.workers[p].in_session))
    }

    /// Identities of all known workers (for heartbeats).
    pub fn worker_ids(&self) -> impl Iterator<Item = &[u8]> {
        self.workers.iter().map(|w| w.id.as_slice())
    }

    pub fn workers(&self, now: Instant) -> Vec<WorkerInfo> {
        self.workers
            .iter()
            .map(|w| WorkerInfo {
                name: w.name.clone(),
                batch: w.batch,
                frames: w.frames_total,
                in_flight: w.in_flight.len() as u64,
                credit: w.available(),
                idle_ms: now.saturating_duration_since(w.last_seen).as_millis() as u64,
                unreturned: w.unreturned,
            })
            .collect()
    }

    /// Queues a frame. With [`QueuePolicy::Block`] and a full queue the frame comes back
    /// and the caller waits for room.
    pub fn push(&mut self, frame: Frame<P>) -> Result<(), Frame<P>> {
        if self.queue.len() >= self.max_queue {
            match self.policy {
                QueuePolicy::Block => return Err(frame),
                QueuePolicy::DropOldest => {
                    while self.queue.len() >= self.max_queue {
                        self.queue.pop_front();
                        self.stats.dropped += 1;
                    }
                }
            }
        }
        self.stats.queued += 1;
        self.queue.push_back(frame);
        Ok(())
    }

    fn position(&self, id: &[u8]) -> Option<usize> {
        self.workers.iter().position(|w| w.id == id)
    }

    /// A worker said it is ready (or is alive).
    pub fn on_ready(
        &mut self,
        id: &[u8],
        ready: &Ready,
        now: Instant,
        is_done: &dyn Fn(u64) -> bool,
    ) -> Reply {
        let pos = match self.position(id) {
            Some(pos) => pos,
            None => {
                self.workers.push(Worker {
                    id: id.to_vec(),
                    name: ready.name.clone(),
                    batch: u64::from(ready.batch.max(1)),
                    in_session: false,
                    credit: 0,
                    sent: 0,
                    taken: 0,
                    batch_fill: 0,
                    last_seen: now,
                    ready_since: now,
                    busy_until: None,
                    in_flight: VecDeque::new(),
                    forgotten: 0,
                    frames_total: 0,
                    unreturned: 0,
                });
                self.stats.workers_joined += 1;
                self.workers.len() - 1
            }
        };
        if ready.session != self.session {
            if self.workers[pos].in_session {
                // It heard another primary: what it had from us is gone.
                self.remove_at(pos, Departure::Unreachable, is_done);
                return self.on_ready(id, ready, now, is_done);
            }
            self.workers[pos].last_seen = now;
            return Reply::Heartbeat;
        }
        let track = self.track_taken;
        let w = &mut self.workers[pos];
        let before = w.available();
        if !w.in_session {
            // Counting starts here: a new worker has taken nothing of this session; one we
            // dropped (silent too long) but which kept counting has taken what it says, and
            // whatever else we had sent it went back to the queue when it was dropped.
            w.in_session = true;
            w.sent = ready.taken;
            w.batch_fill = 0;
        }
        w.last_seen = now;
        w.name.clone_from(&ready.name);
        w.batch = u64::from(ready.batch.max(1));
        w.credit = ready.credit;
        w.taken = ready.taken.min(w.sent);
        if !track {
            let taken = w.taken;
            while w.in_flight.front().is_some_and(|s| s.seq < taken) {
                w.in_flight.pop_front();
            }
        }
        if before == 0 && w.available() > 0 {
            w.ready_since = now;
        }
        Reply::None
    }

    /// Any other sign of life from a worker.
    pub fn on_seen(&mut self, id: &[u8], now: Instant) {
        if let Some(pos) = self.position(id) {
            self.workers[pos].last_seen = now;
        }
    }

    /// The next job: frames for the free worker that has waited longest.
    pub fn next_job(&mut self, now: Instant) -> Option<Job<P>> {
        if self.queue.is_empty() {
            return None;
        }
        let pos = self
            .workers
            .iter()
            .enumerate()
            .filter(|(_, w)| w.available() > 0 && w.busy_until.is_none_or(|t| t <= now))
            .min_by_key(|(_, w)| w.ready_since)
            .map(|(i, _)| i)?;
        let w = &mut self.workers[pos];
        w.busy_until = None;
        let room_in_batch = w.batch - w.batch_fill % w.batch;
        let n = room_in_batch
            .min(w.available())
            .min(self.queue.len() as u64) as usize;
        let frames: Vec<Frame<P>> = self.queue.drain(..n).collect();
        for f in &frames {
            w.in_flight.push_back(Sent {
                seq: w.sent,
                frame: f.clone(),
            });
            w.sent += 1;
        }
        w.batch_fill = (w.batch_fill + n as u64) % w.batch;
        w.frames_total += n as u64;
        // A worker with a partly filled batch keeps its place, so consecutive frames
        // fill its batch; otherwise it goes to the back of the line.
        if w.batch_fill == 0 {
            w.ready_since = now;
        }
        while w.in_flight.len() > MAX_TRACKED_PER_WORKER {
            w.in_flight.pop_front();
            w.forgotten += 1;
        }
        self.stats.dispatched += n as u64;
        self.stats.jobs += 1;
        Some(Job {
            worker: w.id.clone(),
            frames,
        })
    }

    /// The last job could not be queued for sending: its worker's queue is full (`unreachable`
    /// false; try again a little later) or the worker is gone (`unreachable` true).
    pub fn job_failed(
        &mut self,
        job: Job<P>,
        unreachable: bool,
        now: Instant,
        is_done: &dyn Fn(u64) -> bool,
    ) -> Option<Removed> {
        let pos = self.position(&job.worker)?;
        if unreachable {
            return Some(self.remove_at(pos, Departure::Unreachable, is_done));
        }
        let w = &mut self.workers[pos];
        let n = job.frames.len() as u64;
        for _ in 0..n {
            w.in_flight.pop_back();
        }
        w.sent = w.sent.saturating_sub(n);
        w.frames_total = w.frames_total.saturating_sub(n);
        w.batch_fill = (w.batch_fill + w.batch - n % w.batch) % w.batch;
        w.busy_until = Some(now + Duration::from_millis(20));
        self.stats.dispatched = self.stats.dispatched.saturating_sub(n);
        self.stats.jobs = self.stats.jobs.saturating_sub(1);
        for f in job.frames.into_iter().rev() {
            self.queue.push_front(f);
        }
        None
    }

    /// A worker said bye.
    pub fn on_bye(&mut self, id: &[u8], is_done: &dyn Fn(u64) -> bool) -> Option<Removed> {
        self.remove(id, Departure::Left, is_done)
    }

    /// Removes a worker (e.g. a heartbeat to it found it unreachable).
    pub fn remove(
        &mut self,
        id: &[u8],
        why: Departure,
        is_done: &dyn Fn(u64) -> bool,
    ) -> Option<Removed> {
        let pos = self.position(id)?;
        Some(self.remove_at(pos, why, is_done))
    }

    /// Removes workers silent for longer than the worker timeout.
    pub fn expire(&mut self, now: Instant, is_done: &dyn Fn(u64) -> bool) -> Vec<Removed> {
        let mut removed = Vec::new();
        while let Some(pos) = self
            .workers
            .iter()
            .position(|w| now.saturating_duration_since(w.last_seen) > self.worker_timeout)
        {
            removed.push(self.remove_at(pos, Departure::TimedOut, is_done));
        }
        removed
    }

    /// Forgets frames that the progress record says arrived (or are no longer wanted).
    /// Those the collector played past without them (`skipped`) are counted against their
    /// worker; returns, per worker with such frames, its name and their indices.
    pub fn prune(
        &mut self,
        is_done: &dyn Fn(u64) -> bool,
        skipped: &dyn Fn(u64) -> bool,
    ) -> Vec<(String, Vec<u64>)> {
        let mut unreturned = Vec::new();
        for w in &mut self.workers {
            let mut lost = Vec::new();
            w.in_flight.retain(|s| {
                let done = is_done(s.frame.index);
                if done && skipped(s.frame.index) {
                    lost.push(s.frame.index);
                }
                !done
            });
            if !lost.is_empty() {
                w.unreturned += lost.len() as u64;
                self.stats.unreturned += lost.len() as u64;
                unreturned.push((w.name.clone(), lost));
            }
        }
        unreturned
    }

    fn remove_at(&mut self, pos: usize, why: Departure, is_done: &dyn Fn(u64) -> bool) -> Removed {
        let w = self.workers.remove(pos);
        let mut back = Vec::new();
        for s in w.in_flight {
            if is_done(s.frame.index) {
                continue;
            }
            // Without tracking, frames it took are no longer listed here: whether they
            // arrived only the collector knows (its missing count).
            if s.seq >= w.taken || self.track_taken {
                back.push(s.frame);
            }
        }
        let unaccounted = if why == Departure::Left {
            0
        } else {
            w.forgotten
        };
        let redispatched = back.len() as u64;
        self.requeue(back);
        match why {
            Departure::Left => self.stats.workers_left += 1,
            Departure::TimedOut | Departure::Unreachable => self.stats.workers_lost += 1,
        }
        self.stats.redispatched += redispatched;
        self.stats.unaccounted += unaccounted;
        Removed {
            name: w.name,
            why,
            redispatched,
            unaccounted,
        }
    }

    /// Puts frames back into the queue in index order, ahead of newer frames. The queue may
    /// exceed its bound by them (at most one worker's frames).
    fn requeue(&mut self, frames: Vec<Frame<P>>) {
        for f in frames {
            let at = self.queue.partition_point(|q| q.index < f.index);
            if self.queue.get(at).is_some_and(|q| q.index == f.index) {
                continue;
            }
            self.queue.insert(at, f);
        }
    }

    /// Empties the queue (flush), counting nothing.
    pub fn clear_queue(&mut self) {
        self.queue.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 42;

    fn never(_: u64) -> bool {
        false
    }

    fn ready(credit: u64, taken: u64, batch: u32) -> Ready {
        Ready {
            session: S,
            credit,
            taken,
            batch,
            name: "w".into(),
        }
    }

    fn frame(index: u64) -> Frame<u64> {
        Frame {
            index,
            timestamp_ms: 1000 + index as i64,
            payload: index,
        }
    }

    fn sched(track: bool) -> Scheduler<u64> {
        Scheduler::new(S, 8, QueuePolicy::Block, Duration::from_millis(500), track)
    }

    fn indices(job: &Job<u64>) -> Vec<u64> {
        job.frames.iter().map(|f| f.index).collect()
    }

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn unknown_session_gets_a_heartbeat_and_no_frames() {
        let t0 = Instant::now();
        let mut s = sched(false);
        let mut hello = ready(4, 0, 1);
        hello.session = 0;
        assert_eq!(s.on_ready(b"a", &hello, t0, &never), Reply::Heartbeat);
        s.push(frame(0)).unwrap();
        assert_eq!(s.next_job(t0), None);
        assert_eq!(s.on_ready(b"a", &ready(1, 0, 1), t0, &never), Reply::None);
        assert_eq!(indices(&s.next_job(t0).unwrap()), vec![0]);
        assert_eq!(s.stats().workers_joined, 1);
    }

    #[test]
    fn the_worker_waiting_longest_is_served_first() {
        let t0 = Instant::now();
        let mut s = sched(false);
        s.on_ready(b"a", &ready(1, 0, 1), t0, &never);
        s.on_ready(b"b", &ready(1, 0, 1), ms(t0, 1), &never);
        for i in 0..4 {
            s.push(frame(i)).unwrap();
        }
        let j = s.next_job(ms(t0, 2)).unwrap();
        assert_eq!(
            (j.worker.as_slice(), indices(&j)),
            (b"a".as_slice(), vec![0])
        );
        let j = s.next_job(ms(t0, 2)).unwrap();
        assert_eq!(
            (j.worker.as_slice(), indices(&j)),
            (b"b".as_slice(), vec![1])
        );
        assert_eq!(s.next_job(ms(t0, 2)), None, "no credit left");
        // b finishes first and asks again: it gets the next frame, not a.
        s.on_ready(b"b", &ready(2, 1, 1), ms(t0, 3), &never);
        let j = s.next_job(ms(t0, 3)).unwrap();
        assert_eq!(
            (j.worker.as_slice(), indices(&j)),
            (b"b".as_slice(), vec![2])
        );
    }

    #[test]
    fn a_slow_worker_gets_only_what_it_asked_for() {
        let t0 = Instant::now();
        let mut s = sched(false);
        s.on_ready(b"slow", &ready(1, 0, 1), t0, &never);
        s.on_ready(b"fast", &ready(1, 0, 1), t0, &never);
        let mut fast_credit = 1;
        let mut got = std::collections::HashMap::<Vec<u8>, u64>::new();
        for i in 0..100 {
            s.push(frame(i)).unwrap();
            while let Some(j) = s.next_job(ms(t0, i)) {
                *got.entry(j.worker.clone()).or_default() += j.frames.len() as u64;
                if j.worker == b"fast" {
                    fast_credit += 1;
                    s.on_ready(
                        b"fast",
                        &ready(fast_credit, fast_credit - 1, 1),
                        ms(t0, i),
                        &never,
                    );
                }
            }
        }
        assert_eq!(got[b"slow".as_slice()], 1);
        assert_eq!(got[b"fast".as_slice()], 99);
        assert_eq!(s.queue_len(), 0);
    }

    #[test]
    fn consecutive_frames_fill_one_workers_batch() {
        let t0 = Instant::now();
        let mut s = sched(false);
        s.on_ready(b"a", &ready(8, 0, 4), t0, &never);
        s.on_ready(b"b", &ready(8, 0, 4), t0, &never);
        let mut to = Vec::new();
        for i in 0..8 {
            s.push(frame(i)).unwrap();
            let j = s.next_job(ms(t0, 1 + i)).unwrap();
            to.push(j.worker[0]);
        }
        assert_eq!(to, b"aaaabbbb");
        // With frames waiting, a job is one whole batch message.
        for i in 8..16 {
            s.push(frame(i)).unwrap();
        }
        let j = s.next_job(ms(t0, 20)).unwrap();
        assert_eq!(indices(&j), vec![8, 9, 10, 11]);
    }

    #[test]
    fn block_policy_refuses_and_drop_oldest_drops() {
        let mut s = sched(false);
        for i in 0..8 {
            s.push(frame(i)).unwrap();
        }
        assert!(!s.has_room());
        assert_eq!(s.push(frame(8)), Err(frame(8)));
        s.set_policy(QueuePolicy::DropOldest, 8);
        s.push(frame(8)).unwrap();
        s.push(frame(9)).unwrap();
        assert_eq!(s.queue_len(), 8);
        assert_eq!(s.stats().dropped, 2);
        let t0 = Instant::now();
        s.on_ready(b"a", &ready(1, 0, 1), t0, &never);
        assert_eq!(indices(&s.next_job(t0).unwrap()), vec![2]);
    }

    #[test]
    fn frames_a_dead_worker_had_not_taken_go_to_the_others_in_order() {
        let t0 = Instant::now();
        let mut s = sched(false);
        s.on_ready(b"a", &ready(3, 0, 1), t0, &never);
        for i in 0..6 {
            s.push(frame(i)).unwrap();
        }
        for _ in 0..3 {
            s.next_job(t0).unwrap();
        }
        // a took frame 0 into its pipeline, then went silent.
        s.on_ready(b"a", &ready(3, 1, 1), ms(t0, 10), &never);
        s.on_ready(b"b", &ready(1, 0, 1), ms(t0, 400), &never);
        let removed = s.expire(ms(t0, 600), &never);
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].why, Departure::TimedOut);
        assert_eq!(removed[0].redispatched, 2);
        assert_eq!(s.stats().workers_lost, 1);
        assert_eq!(s.stats().redispatched, 2);
        assert_eq!(indices(&s.next_job(ms(t0, 600)).unwrap()), vec![1]);
        assert_eq!(s.worker_count(), 1);
    }

    #[test]
    fn frames_a_worker_never_returned_are_counted_against_it() {
        let t0 = Instant::now();
        let mut s = sched(true);
        s.on_ready(b"a", &ready(4, 0, 1), t0, &never);
        for i in 0..4 {
            s.push(frame(i)).unwrap();
        }
        while s.next_job(t0).is_some() {}
        s.on_ready(b"a", &ready(8, 4, 1), t0, &never);
        // The collector played 3 and went past 1 and 2 without them (a dropping queue in
        // the worker); 0 arrived.
        let done = |i: u64| i <= 3;
        let skipped = |i: u64| i == 1 || i == 2;
        let lost = s.prune(&done, &skipped);
        assert_eq!(lost, vec![("w".to_string(), vec![1, 2])]);
        assert_eq!(s.stats().unreturned, 2);
        assert_eq!(s.workers(t0)[0].unreturned, 2);
        assert_eq!(s.in_flight(), 0);
        assert!(s.prune(&done, &skipped).is_empty(), "counted once");
    }

    #[test]
    fn with_tracking_every_undelivered_frame_is_sent_again() {
        let t0 = Instant::now();
        let mut s = sched(true);
        s.on_ready(b"a", &ready(4, 0, 1), t0, &never);
        for i in 0..4 {
            s.push(frame(i)).unwrap();
        }
        while s.next_job(t0).is_some() {}
        s.on_ready(b"a", &ready(4, 3, 1), t0, &never);
        // Frame 0 reached the collector, 1 and 2 were inside a's pipeline, 3 not taken.
        let done = |i: u64| i == 0;
        assert!(s.prune(&done, &never).is_empty());
        assert_eq!(s.in_flight(), 3);
        let job = Job {
            worker: b"a".to_vec(),
            frames: vec![],
        };
        let removed = s.job_failed(job, true, t0, &done).unwrap();
        assert_eq!(removed.why, Departure::Unreachable);
        assert_eq!(removed.redispatched, 3);
        s.on_ready(b"b", &ready(8, 0, 8), t0, &never);
        assert_eq!(indices(&s.next_job(t0).unwrap()), vec![1, 2, 3]);
    }

    #[test]
    fn a_full_worker_queue_puts_the_job_back() {
        let t0 = Instant::now();
        let mut s = sched(false);
        s.on_ready(b"a", &ready(2, 0, 2), t0, &never);
        s.push(frame(0)).unwrap();
        s.push(frame(1)).unwrap();
        let job = s.next_job(t0).unwrap();
        assert!(s.job_failed(job, false, t0, &never).is_none());
        assert_eq!(s.queue_len(), 2);
        assert_eq!(
            s.next_job(ms(t0, 5)),
            None,
            "worker marked busy for a moment"
        );
        let job = s.next_job(ms(t0, 25)).unwrap();
        assert_eq!(indices(&job), vec![0, 1]);
        assert_eq!(s.stats().dispatched, 2);
        assert_eq!(s.stats().jobs, 1);
    }

    #[test]
    fn bye_counts_as_left_and_returns_untaken_frames() {
        let t0 = Instant::now();
        let mut s = sched(false);
        s.on_ready(b"a", &ready(2, 0, 1), t0, &never);
        s.push(frame(0)).unwrap();
        s.push(frame(1)).unwrap();
        s.next_job(t0).unwrap();
        s.next_job(t0).unwrap();
        s.on_ready(b"a", &ready(3, 1, 1), t0, &never);
        let removed = s.on_bye(b"a", &never).unwrap();
        assert_eq!((removed.why, removed.redispatched), (Departure::Left, 1));
        assert_eq!(s.stats().workers_left, 1);
        assert_eq!(s.stats().workers_lost, 0);
        assert_eq!(s.queue_len(), 1);
    }

    #[test]
    fn a_worker_dropped_while_alive_gets_only_its_room_back() {
        let t0 = Instant::now();
        let mut s = sched(false);
        s.on_ready(b"a", &ready(2, 0, 1), t0, &never);
        for i in 0..200 {
            s.push(frame(i % 8)).unwrap_or(());
            while let Some(j) = s.next_job(t0) {
                let n = j.frames.len() as u64;
                let taken = s.stats().dispatched;
                s.on_ready(b"a", &ready(taken + 2, taken, 1), t0, &never);
                assert_eq!(n, 1);
            }
        }
        // Silent too long under load: dropped; then its heartbeat (still our session,
        // credit = taken + room) comes in.
        assert_eq!(s.expire(ms(t0, 600), &never).len(), 1);
        let taken = s.stats().dispatched;
        s.on_ready(b"a", &ready(taken + 2, taken, 1), ms(t0, 700), &never);
        for i in 0..8 {
            s.push(frame(1000 + i)).unwrap();
        }
        let mut got = 0;
        while let Some(j) = s.next_job(ms(t0, 700)) {
            got += j.frames.len();
        }
        assert_eq!(got, 2, "only the room it asked for, not its whole history");
    }

    #[test]
    fn a_worker_that_switched_primary_is_reset() {
        let t0 = Instant::now();
        let mut s = sched(false);
        s.on_ready(b"a", &ready(2, 0, 1), t0, &never);
        s.push(frame(0)).unwrap();
        s.next_job(t0).unwrap();
        let mut other = ready(5, 0, 1);
        other.session = 7;
        assert_eq!(s.on_ready(b"a", &other, t0, &never), Reply::Heartbeat);
        assert_eq!(s.queue_len(), 1, "its frame went back to the queue");
        assert_eq!(s.stats().workers_joined, 2);
    }
}
