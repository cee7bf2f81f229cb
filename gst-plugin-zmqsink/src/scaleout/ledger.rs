// SPDX-License-Identifier: MPL-2.0
//! The progress record shared, inside one process, by a `zmqdispatchsink` and a
//! `zmqcollectsrc` with the same `group` name (like the channel of the inter elements).
//!
//! The collector writes which frames arrived and how far it has played; the dispatcher
//! reads it to forget delivered frames and to re-send the undelivered frames of a worker
//! that died, and writes where its stream began (its first index, and whether it holds its
//! source rather than drop frames) and where its input ended, so that the collector counts
//! every frame of the stream and can end its stream once the last frame is played or
//! given up. Without a collector in the same process the
//! dispatcher still works, it just cannot re-send frames a dead worker had taken.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, LazyLock, Mutex, Weak};

/// Where the dispatcher's input ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    /// Index and entry timestamp (ms since the epoch) of the last frame dispatched, if any.
    pub last: Option<(u64, i64)>,
}

#[derive(Debug, Default)]
struct State {
    collectors: usize,
    next: Option<u64>,
    received: BTreeSet<u64>,
    /// The dispatcher's first index of the current stream.
    first: Option<u64>,
    /// The dispatcher holds its source when the queue is full (block) instead of dropping.
    holds_source: Option<bool>,
    /// Frames the collector played past without them, until the dispatcher looked.
    skipped: BTreeSet<u64>,
    end: Option<End>,
}

/// Most skipped indices remembered between two looks of the dispatcher.
const MAX_SKIPPED: usize = 65_536;

#[derive(Debug, Default)]
pub struct Ledger {
    state: Mutex<State>,
}

static REGISTRY: LazyLock<Mutex<HashMap<String, Weak<Ledger>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The record for `group`, shared with every other element of this process using it.
pub fn ledger(group: &str) -> Arc<Ledger> {
    let mut registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    registry.retain(|_, w| w.strong_count() > 0);
    if let Some(l) = registry.get(group).and_then(Weak::upgrade) {
        return l;
    }
    let l = Arc::new(Ledger::default());
    registry.insert(group.to_owned(), Arc::downgrade(&l));
    l
}

impl Ledger {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A collector starts writing to this record.
    pub fn attach_collector(&self) {
        let mut s = self.lock();
        s.collectors += 1;
        s.next = None;
        s.received.clear();
    }

    pub fn detach_collector(&self) {
        let mut s = self.lock();
        s.collectors = s.collectors.saturating_sub(1);
        if s.collectors == 0 {
            s.next = None;
            s.received.clear();
        }
    }

    pub fn has_collector(&self) -> bool {
        self.lock().collectors > 0
    }

    /// The collector holds frame `index`.
    pub fn received(&self, index: u64) {
        let mut s = self.lock();
        if s.next.is_none_or(|n| index >= n) {
            s.received.insert(index);
        }
    }

    /// The collector played or gave up everything below `next`.
    pub fn advanced(&self, next: u64) {
        let mut s = self.lock();
        s.next = Some(next);
        s.received = s.received.split_off(&next);
    }

    /// The collector restarted its count (flush or a new stream).
    pub fn reset_progress(&self) {
        let mut s = self.lock();
        s.next = None;
        s.received.clear();
        s.skipped.clear();
    }

    /// The collector played past `indices` without them (kept for a dispatcher in this
    /// process, which counts them against the workers that had them).
    pub fn skipped(&self, indices: std::ops::Range<u64>) {
        let mut s = self.lock();
        if s.holds_source.is_some() {
            // Bounded: a dispatcher looks at every heartbeat and forgets what it saw.
            let room = MAX_SKIPPED.saturating_sub(s.skipped.len()) as u64;
            let from = indices.end.saturating_sub(room).max(indices.start);
            s.skipped.extend(from..indices.end);
        }
    }

    /// The frames skipped since the last call (for the dispatcher).
    pub fn take_skipped(&self) -> BTreeSet<u64> {
        std::mem::take(&mut self.lock().skipped)
    }

    /// True when frame `index` needs no (re-)sending: it arrived, or its time is over.
    pub fn is_done(&self, index: u64) -> bool {
        let s = self.lock();
        s.next.is_some_and(|n| index < n) || s.received.contains(&index)
    }

    pub fn set_end(&self, end: Option<End>) {
        self.lock().end = end;
    }

    /// The dispatcher starts a new stream (start, stream-start, flush): no first frame yet,
    /// no end.
    pub fn new_stream(&self) {
        let mut s = self.lock();
        s.end = None;
        s.first = None;
    }

    /// The dispatcher took frame `index` in; the first one of a stream is remembered.
    pub fn dispatched(&self, index: u64) {
        self.lock().first.get_or_insert(index);
    }

    /// The first index of the dispatcher's current stream, once it took a frame.
    pub fn first(&self) -> Option<u64> {
        self.lock().first
    }

    /// Whether the dispatcher holds its source (queue-policy block): `None` without one.
    pub fn set_holds_source(&self, holds: Option<bool>) {
        let mut s = self.lock();
        s.holds_source = holds;
        if holds.is_none() {
            s.skipped.clear();
        }
    }

    pub fn holds_source(&self) -> Option<bool> {
        self.lock().holds_source
    }

    pub fn end(&self) -> Option<End> {
        self.lock().end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_group_same_record() {
        let a = ledger("test-same-group");
        let b = ledger("test-same-group");
        let c = ledger("test-other-group");
        a.attach_collector();
        assert!(b.has_collector());
        assert!(!c.has_collector());
        a.detach_collector();
        assert!(!b.has_collector());
    }

    #[test]
    fn progress_marks_frames_done() {
        let l = ledger("test-progress");
        l.attach_collector();
        l.received(5);
        assert!(l.is_done(5));
        assert!(!l.is_done(3));
        l.advanced(4);
        assert!(l.is_done(3), "played or given up");
        assert!(l.is_done(5), "held");
        assert!(!l.is_done(4));
        l.advanced(6);
        l.received(2);
        assert!(l.is_done(2));
        l.reset_progress();
        assert!(!l.is_done(2));
        l.set_end(Some(End {
            last: Some((9, 1234)),
        }));
        assert_eq!(l.end().unwrap().last, Some((9, 1234)));
        l.dispatched(3);
        l.dispatched(4);
        assert_eq!(l.first(), Some(3));
        l.new_stream();
        assert_eq!((l.first(), l.end()), (None, None));
        l.skipped(5..7);
        assert!(l.take_skipped().is_empty(), "no dispatcher: nothing kept");
        l.set_holds_source(Some(true));
        l.skipped(5..7);
        assert_eq!(l.take_skipped().into_iter().collect::<Vec<_>>(), vec![5, 6]);
        assert!(l.take_skipped().is_empty());
        l.detach_collector();
    }
}
