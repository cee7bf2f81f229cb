// SPDX-License-Identifier: MPL-2.0
//! One bounded queue between two threads of an inference element (`i2itransform`,
//! `onnxtransform`).
//!
//! The element has two: the streaming thread hands converted frames to the inference task,
//! and the task hands finished pictures to the output thread. Both carry frames (which count
//! against the bound) and serialized events (which do not: an event never waits behind a
//! full queue, or the stream could deadlock on a caps or EOS). A `Mutex` and a `Condvar`
//! rather than a channel, because a flush must see and drain what is queued, and a waiting
//! producer must wake when the consumer fails or the element flushes.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What [`BoundedQueue::pop_wait`] got.
#[derive(Debug, PartialEq)]
pub enum Popped<T> {
    Item(T),
    /// `give_up` said so (flushing, an error).
    GaveUp,
    /// Nothing came within the timeout.
    TimedOut,
}

/// An item that may count against the queue's bound.
pub trait QueueItem {
    /// Frames count against `max_frames`; events do not.
    fn is_frame(&self) -> bool;
}

/// The queue's contents and flags, seen under its lock.
pub struct QueueState<T> {
    items: VecDeque<T>,
    /// Frames among `items`.
    frames: usize,
    pub max_frames: usize,
    /// Nothing is taken or queued (the items stay for the flush to sort out).
    pub flushing: bool,
    /// The consumer thread ends (the output thread only; the task has its pad task).
    pub stop: bool,
    /// The consumer is working on an item it took.
    pub busy: bool,
    /// The first flow error of the stream, returned to whoever pushes next.
    pub flow: Result<gst::FlowSuccess, gst::FlowError>,
}

impl<T: QueueItem> QueueState<T> {
    pub fn frames(&self) -> usize {
        self.frames
    }

    pub fn is_full(&self) -> bool {
        self.frames >= self.max_frames
    }

    pub fn push_back(&mut self, item: T) {
        if item.is_frame() {
            self.frames += 1;
        }
        self.items.push_back(item);
    }

    pub fn pop_front(&mut self) -> Option<T> {
        let item = self.items.pop_front()?;
        if item.is_frame() {
            self.frames -= 1;
        }
        Some(item)
    }

    /// Takes out the oldest frame, leaving events where they are.
    pub fn remove_oldest_frame(&mut self) -> Option<T> {
        let pos = self.items.iter().position(QueueItem::is_frame)?;
        self.frames -= 1;
        self.items.remove(pos)
    }

    /// Live input faster than inference: queues `item` after taking out the oldest frames
    /// so that at most `keep` wait (the newest among them); returns the frames taken out,
    /// which the caller counts as late.
    pub fn push_dropping_oldest(&mut self, item: T, keep: usize) -> Vec<T> {
        let mut late = Vec::new();
        while self.frames >= keep.max(1) {
            match self.remove_oldest_frame() {
                Some(f) => late.push(f),
                None => break,
            }
        }
        self.push_back(item);
        late
    }

    /// Empties the queue, oldest first.
    pub fn drain(&mut self) -> Vec<T> {
        self.frames = 0;
        self.items.drain(..).collect()
    }
}

pub struct BoundedQueue<T> {
    state: Mutex<QueueState<T>>,
    cond: Condvar,
}

impl<T: QueueItem> BoundedQueue<T> {
    /// A queue that starts flushing and stopped: activating the pad opens it.
    pub fn new(max_frames: usize) -> Self {
        BoundedQueue {
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                frames: 0,
                max_frames,
                flushing: true,
                stop: true,
                busy: false,
                flow: Ok(gst::FlowSuccess::Ok),
            }),
            cond: Condvar::new(),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, QueueState<T>> {
        self.state.lock().unwrap()
    }

    /// Wakes every thread waiting on the queue (call with the lock held or just after
    /// changing what the waiters look at).
    pub fn notify(&self) {
        self.cond.notify_all();
    }

    pub fn wait<'a>(&self, guard: MutexGuard<'a, QueueState<T>>) -> MutexGuard<'a, QueueState<T>> {
        self.cond.wait(guard).unwrap()
    }

    /// Takes the next item, waiting for one (at most `timeout` when given); gives up as
    /// soon as `give_up` says so.
    pub fn pop_wait(
        &self,
        give_up: impl Fn(&QueueState<T>) -> bool,
        timeout: Option<Duration>,
    ) -> Popped<T> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut q = self.lock();
        loop {
            if give_up(&q) {
                return Popped::GaveUp;
            }
            if let Some(item) = q.pop_front() {
                self.notify();
                return Popped::Item(item);
            }
            match deadline {
                None => q = self.wait(q),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Popped::TimedOut;
                    }
                    q = self.cond.wait_timeout(q, left).unwrap().0;
                }
            }
        }
    }

    /// Queues an item unless the queue is flushing (an event: it never waits for room);
    /// false when refused.
    pub fn push_unless_flushing(&self, item: T) -> bool {
        let mut q = self.lock();
        if q.flushing {
            return false;
        }
        q.push_back(item);
        self.notify();
        true
    }

    /// The consumer (the output thread) takes the next item, waiting for one while the
    /// queue is flushing or empty, and is busy with it until [`Self::done`]; `None` once
    /// it is to stop.
    pub fn take_busy(&self) -> Option<T> {
        let mut q = self.lock();
        loop {
            if q.stop {
                return None;
            }
            if !q.flushing
                && let Some(item) = q.pop_front()
            {
                q.busy = true;
                self.notify();
                return Some(item);
            }
            q = self.wait(q);
        }
    }

    /// The consumer is done with the item [`Self::take_busy`] gave it.
    pub fn done(&self) {
        let mut q = self.lock();
        q.busy = false;
        self.notify();
    }

    /// Waits until the consumer is not working on an item.
    pub fn wait_idle(&self) {
        let mut q = self.lock();
        while q.busy {
            q = self.wait(q);
        }
    }

    /// Queues an item, a frame waiting while the queue is full; `refused` (checked before
    /// each wait) ends the wait with its error.
    pub fn push_wait(
        &self,
        item: T,
        refused: impl Fn(&QueueState<T>) -> Result<(), gst::FlowError>,
    ) -> Result<(), gst::FlowError> {
        let frame = item.is_frame();
        let mut q = self.lock();
        loop {
            refused(&q)?;
            if !frame || !q.is_full() {
                break;
            }
            q = self.wait(q);
        }
        q.push_back(item);
        self.notify();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum It {
        Frame(u32),
        Event(u32),
    }

    impl QueueItem for It {
        fn is_frame(&self) -> bool {
            matches!(self, It::Frame(_))
        }
    }

    #[test]
    fn events_do_not_count_and_the_oldest_frame_can_be_dropped() {
        let q = BoundedQueue::new(2);
        q.lock().flushing = false;
        let ok = |_: &QueueState<It>| Ok(());
        q.push_wait(It::Event(0), ok).unwrap();
        q.push_wait(It::Frame(1), ok).unwrap();
        q.push_wait(It::Event(2), ok).unwrap();
        q.push_wait(It::Frame(3), ok).unwrap();
        let mut s = q.lock();
        assert!(s.is_full());
        assert_eq!(s.frames(), 2);
        assert_eq!(s.remove_oldest_frame(), Some(It::Frame(1)));
        assert_eq!(s.frames(), 1);
        assert_eq!(s.pop_front(), Some(It::Event(0)));
        assert_eq!(s.drain(), vec![It::Event(2), It::Frame(3)]);
        assert_eq!(s.frames(), 0);
    }

    #[test]
    fn dropping_keeps_the_newest_frames_and_every_event() {
        let q = BoundedQueue::new(4);
        let mut s = q.lock();
        s.push_back(It::Frame(1));
        s.push_back(It::Event(2));
        s.push_back(It::Frame(3));
        assert_eq!(
            s.push_dropping_oldest(It::Frame(4), 1),
            vec![It::Frame(1), It::Frame(3)]
        );
        assert_eq!(s.drain(), vec![It::Event(2), It::Frame(4)]);
        assert!(s.push_dropping_oldest(It::Frame(5), 2).is_empty());
        assert_eq!(s.frames(), 1);
    }

    #[test]
    fn a_full_queue_refuses_when_told() {
        let q = BoundedQueue::new(1);
        q.push_wait(It::Frame(0), |_| Ok(())).unwrap();
        let r = q.push_wait(It::Frame(1), |s| {
            if s.flushing {
                Err(gst::FlowError::Flushing)
            } else {
                Ok(())
            }
        });
        assert_eq!(r, Err(gst::FlowError::Flushing));
        assert_eq!(q.pop_wait(|_| false, None), Popped::Item(It::Frame(0)));
        assert_eq!(q.pop_wait(|s| s.flushing, None), Popped::GaveUp);
        q.lock().flushing = false;
        let timeout = Some(Duration::from_millis(10));
        assert_eq!(q.pop_wait(|s| s.flushing, timeout), Popped::TimedOut);
    }
}
