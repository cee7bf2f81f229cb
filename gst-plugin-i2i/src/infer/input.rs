// SPDX-License-Identifier: MPL-2.0
//! The input side of an inference element: what the streaming thread keeps, and what it
//! hands to the inference task.
//!
//! The streaming thread reads each frame into what the element's model takes (raw video:
//! converted to RGB8 at the model size first) and queues it with the input's timing and
//! metadata.
//! Events travel through the same queue so that they leave in stream order.

use std::sync::mpsc;

use super::convert::InputConverter;
use super::queue::QueueItem;

/// Frames waiting on a dropping queue: the newest only, so that latency stays one frame.
pub const DROPPING_QUEUE_FRAMES: usize = 1;

/// What travels from an input buffer to its output: flags, timestamps, offsets, metas.
pub const METADATA_COPY: gst::BufferCopyFlags = gst::BufferCopyFlags::FLAGS
    .union(gst::BufferCopyFlags::TIMESTAMPS)
    .union(gst::BufferCopyFlags::META);

/// Streaming-thread side: input conversion and the running-time reference.
pub struct InputState {
    pub converter: Option<InputConverter>,
    pub segment: gst::FormattedSegment<gst::ClockTime>,
    /// The element's count of frames, which tags each one.
    pub next_tag: u64,
    /// Upstream is a live source (asked when caps arrive).
    pub upstream_live: bool,
    /// The input's frame rate (None before caps).
    pub fps: Option<gst::Fraction>,
}

impl Default for InputState {
    fn default() -> Self {
        InputState {
            converter: None,
            segment: gst::FormattedSegment::new(),
            next_tag: 0,
            upstream_live: false,
            fps: None,
        }
    }
}

/// A raw video frame converted to RGB8 at the model size.
pub struct RgbFrame {
    pub rgb: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// A frame prepared on the streaming thread, waiting for inference: the element's model
/// input (`data`) with the input's timing.
pub struct Queued<D> {
    /// The element's count of this frame.
    pub tag: u64,
    pub data: D,
    /// A buffer without memory carrying the input's timestamps, offsets, flags and metas.
    pub meta: gst::Buffer,
    pub running_time: Option<gst::ClockTime>,
    /// The input offset (frame index) when upstream set one, else the element's count.
    pub index: u64,
}

/// A serialized event with what the output thread must do with it.
pub enum Deferred {
    Event(gst::Event),
    /// New output caps and the output format they describe.
    Caps(gst::Event, gst_video::VideoInfo),
}

/// What the streaming thread hands to the task, in stream order.
pub enum Item<D> {
    Frame(Queued<D>),
    Event(Deferred),
    Eos(gst::Event),
    /// A DRAIN query: every frame before it comes out, then the sender is told.
    Drain(mpsc::Sender<()>),
}

impl<D> QueueItem for Item<D> {
    fn is_frame(&self) -> bool {
        matches!(self, Item::Frame(_))
    }
}

/// A buffer without memory carrying `buffer`'s flags, timestamps, offsets and the metas
/// that still describe the output: metas tied to the input picture (video meta, crop,
/// regions: all tagged) do not; untagged ones (reference timestamps, custom metas) carry
/// over, as in GstBaseTransform. With the error when something could not be copied.
pub fn frame_meta(buffer: &gst::BufferRef) -> (gst::Buffer, Result<(), glib::BoolError>) {
    let mut meta = gst::Buffer::new();
    let m = meta.get_mut().expect("new buffer is writable");
    let copied = buffer.copy_into(m, METADATA_COPY, ..);
    m.foreach_meta_mut(|m| {
        let action = if m.tags().is_empty() {
            gst::buffer::BufferMetaForeachAction::Keep
        } else {
            gst::buffer::BufferMetaForeachAction::Remove
        };
        std::ops::ControlFlow::Continue(action)
    });
    (meta, copied)
}
