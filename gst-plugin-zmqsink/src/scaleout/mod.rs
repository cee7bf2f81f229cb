// SPDX-License-Identifier: MPL-2.0
//! Scale-out over several machines: the logic behind `zmqdispatchsink` (primary: hands
//! frames to the next free worker), `zmqworkersrc` (worker: asks for frames and receives
//! them) and `zmqcollectsrc` (primary: puts the workers' results back in order at the
//! source's pace). Plain Rust with its own tests; the elements are thin glue around it.

pub mod dispatch;
pub mod ledger;
pub mod playout;
pub mod wire;

use std::time::{SystemTime, UNIX_EPOCH};

/// Default ports of the scale-out, after the original system: frames to workers on 5555,
/// settings on 5556, final stream on 5557, results from workers on 5558.
pub const DISPATCH_PORT: u16 = 5555;
pub const COLLECT_PORT: u16 = 5558;

pub fn unix_now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

pub fn unix_now_ms() -> i64 {
    unix_now_us() / 1000
}

/// The frame's original Unix time in ms, from its `timestamp/x-unix` reference meta.
pub fn unix_ms_from_meta(buffer: &gst::BufferRef) -> Option<i64> {
    buffer
        .iter_meta::<gst::ReferenceTimestampMeta>()
        .find(|m| {
            m.reference()
                .structure(0)
                .is_some_and(|s| s.name() == crate::UNIX_TIMESTAMP_CAPS)
        })
        .map(|m| crate::protocol::ns_to_timestamp_ms(m.timestamp().nseconds()))
}

/// Attaches the frame's original Unix time (ms) as a `timestamp/x-unix` reference meta.
pub fn add_unix_meta(buffer: &mut gst::BufferRef, timestamp_ms: i64) {
    static CAPS: std::sync::LazyLock<gst::Caps> =
        std::sync::LazyLock::new(|| gst::Caps::new_empty_simple(crate::UNIX_TIMESTAMP_CAPS));
    let ns = crate::protocol::timestamp_ms_to_ns(timestamp_ms).unwrap_or(0);
    gst::ReferenceTimestampMeta::add(buffer, &CAPS, gst::ClockTime::from_nseconds(ns), None);
}

/// `image/jpeg` caps for frames of `size` (when known) at `framerate`.
pub fn jpeg_caps(size: Option<(usize, usize)>, framerate: gst::Fraction) -> gst::Caps {
    let mut b = gst::Caps::builder("image/jpeg");
    if let Some((w, h)) = size {
        b = b.field("width", w as i32).field("height", h as i32);
    }
    b.field("framerate", framerate).build()
}

/// Wakes a thread waiting in `zmq::poll` from any other thread: the read end of a socket
/// pair is polled along with the ZeroMQ sockets (which must stay on their own thread).
#[derive(Debug)]
pub struct Waker {
    tx: std::os::unix::net::UnixStream,
    rx: std::os::unix::net::UnixStream,
}

impl Waker {
    pub fn new() -> std::io::Result<Waker> {
        let (tx, rx) = std::os::unix::net::UnixStream::pair()?;
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        Ok(Waker { tx, rx })
    }

    pub fn wake(&self) {
        use std::io::Write;
        // A full pipe already wakes the poller: a failed write loses nothing.
        let _ = (&self.tx).write(&[1]);
    }

    /// A poll item that is readable after [`Waker::wake`].
    pub fn poll_item(&self) -> zmq::PollItem<'static> {
        use std::os::fd::AsRawFd;
        zmq::PollItem::from_fd(self.rx.as_raw_fd(), zmq::POLLIN)
    }

    /// Empties the pipe, so the next poll blocks again.
    pub fn clear(&self) {
        use std::io::Read;
        let mut buf = [0u8; 64];
        while let Ok(n) = (&self.rx).read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    }
}

/// A random non-zero session number for a dispatcher run.
pub fn new_session() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(unix_now_us());
    h.write_u32(std::process::id());
    h.finish().max(1)
}

/// Lets through one report per interval, counting what it held back.
#[derive(Debug)]
pub struct RateLimit {
    interval: std::time::Duration,
    last: Option<std::time::Instant>,
    held: u64,
}

impl RateLimit {
    pub fn new(interval: std::time::Duration) -> Self {
        RateLimit {
            interval,
            last: None,
            held: 0,
        }
    }

    /// `Some(n)` when a report may go out now, `n` being how many were held back before it.
    pub fn allow(&mut self, now: std::time::Instant) -> Option<u64> {
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
}
