// SPDX-License-Identifier: MPL-2.0
//! A frame's original Unix time, shared by the five elements: the clock reading, and the
//! `timestamp/x-unix` reference meta that carries it from one pipeline to the next.
//!
//! The meta is read through its raw field: gstreamer 0.25's `timestamp()` accessor panics
//! on an undefined timestamp, and a buffer's metas come from outside.

use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use i2i_core::protocol;

static UNIX_CAPS: LazyLock<gst::Caps> =
    LazyLock::new(|| gst::Caps::new_empty_simple(crate::UNIX_TIMESTAMP_CAPS));

/// Now, in ns since the Unix epoch (0 for a clock set before 1970).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Now, in µs since the Unix epoch.
pub fn now_us() -> i64 {
    (now_ns() / 1000) as i64
}

/// Now, in ms since the Unix epoch.
pub fn now_ms() -> i64 {
    (now_ns() / 1_000_000) as i64
}

/// The frame's original Unix time in ns, from its `timestamp/x-unix` reference meta;
/// `None` without one, or when its timestamp is undefined.
pub fn ns_from_meta(buffer: &gst::BufferRef) -> Option<u64> {
    buffer
        .iter_meta::<gst::ReferenceTimestampMeta>()
        .filter(|m| {
            m.reference()
                .structure(0)
                .is_some_and(|s| s.name() == crate::UNIX_TIMESTAMP_CAPS)
        })
        // SAFETY: the pointer is the meta this reference borrows.
        .map(|m| unsafe { (*m.as_ptr()).timestamp })
        .find(|&ts| ts != gst::ffi::GST_CLOCK_TIME_NONE)
}

/// The frame's original Unix time in ms, from its `timestamp/x-unix` reference meta.
pub fn ms_from_meta(buffer: &gst::BufferRef) -> Option<i64> {
    ns_from_meta(buffer).map(protocol::ns_to_timestamp_ms)
}

/// Attaches the frame's original Unix time (ms) as a `timestamp/x-unix` reference meta.
pub fn add_meta(buffer: &mut gst::BufferRef, timestamp_ms: i64) {
    let ns = protocol::timestamp_ms_to_ns(timestamp_ms).unwrap_or(0);
    gst::ReferenceTimestampMeta::add(buffer, &UNIX_CAPS, gst::ClockTime::from_nseconds(ns), None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trip_and_an_undefined_timestamp_reads_as_none() {
        gst::init().unwrap();
        let mut buffer = gst::Buffer::new();
        let b = buffer.get_mut().unwrap();
        assert_eq!(ms_from_meta(b), None);
        // An undefined timestamp (as a foreign element may attach) must not panic.
        let caps = gst::Caps::new_empty_simple(crate::UNIX_TIMESTAMP_CAPS);
        let meta = gst::ReferenceTimestampMeta::add(b, &caps, gst::ClockTime::ZERO, None);
        // SAFETY: the meta was just added to this writable buffer.
        unsafe {
            (*(meta.as_ptr() as *mut gst::ffi::GstReferenceTimestampMeta)).timestamp =
                gst::ffi::GST_CLOCK_TIME_NONE
        };
        assert_eq!(ms_from_meta(b), None);
        add_meta(b, 1_700_000_000_123);
        assert_eq!(ms_from_meta(b), Some(1_700_000_000_123));
        assert!((now_ms() - now_us() / 1000).abs() <= 1);
    }
}
