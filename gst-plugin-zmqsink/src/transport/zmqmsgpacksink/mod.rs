// SPDX-License-Identifier: MPL-2.0
//! `zmqmsgpacksink`: sends each frame as one ZeroMQ message `[timestamp_ms, index, jpg]`.

use gst::glib;
use gst::prelude::*;

mod imp;

glib::wrapper! {
    pub struct ZmqMsgpackSink(ObjectSubclass<imp::ZmqMsgpackSink>)
        @extends gst_base::BaseSink, gst::Element, gst::Object;
}

/// The ZeroMQ pattern of the sink.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstZmqMsgpackSinkSocketType")]
pub enum SinkSocketType {
    /// Every subscriber gets every frame; a frame that cannot be queued is dropped and
    /// counted, the pipeline never waits.
    #[enum_value(
        name = "PUB: every subscriber gets the frames; frames are dropped (and counted) when a subscriber is behind",
        nick = "pub"
    )]
    Pub = 0,
    /// Frames go round-robin to the connected pullers; the sink waits when they are
    /// behind (backpressure).
    #[enum_value(
        name = "PUSH: frames go round-robin to pullers; the sink waits when they are behind (backpressure)",
        nick = "push"
    )]
    Push = 1,
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "zmqmsgpacksink",
        gst::Rank::NONE,
        ZmqMsgpackSink::static_type(),
    )
}
