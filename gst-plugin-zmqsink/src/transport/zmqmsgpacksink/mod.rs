// SPDX-License-Identifier: MPL-2.0
//! `zmqmsgpacksink`: sends each frame as one ZeroMQ message `[timestamp_ms, index, jpg]`,
//! or latents as `[timestamp_ms, index, payload, meta]`.

/**
 * SECTION:element-zmqmsgpacksink
 * @see_also: zmqmsgpacksrc, zmqcollectsrc
 *
 * Sends each frame as one ZeroMQ message, the msgpack array `[timestamp_ms, index, jpg]`
 * (latents from `i2itransform output=latent` as `[timestamp_ms, index, payload, meta]`), so
 * receivers of the original system keep working. Raw video is JPEG-encoded with libjpeg-turbo;
 * JPEG input is sent as it is. `socket-type=pub` (default) never waits: a subscriber too slow
 * for the stream loses only its own frames; `push` waits for pullers. It binds `endpoint` (or
 * all interfaces on `port`) unless `bind=false`; `last-endpoint` is the address in use. CURVE with
 * `curve-key`, `curve-allow` or `curve-server-key`; counts in `stats`. See docs/transport.md.
 *
 * ## Example launch line
 *
 * ```shell
 * gst-launch-1.0 videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=15/1 \
 *   ! zmqmsgpacksink endpoint=tcp://0.0.0.0:5557
 * ```
 *
 * Publishes a test picture on port 5557; `i2i-stats --port 5557` or `zmqmsgpacksrc` receive it.
 */
use gst::glib;
use gst::prelude::*;

mod imp;

pub(crate) use imp::RENAMED;

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

/// The element type latents travel as (`application/x-i2i-latent` input only).
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstZmqMsgpackSinkLatentDtype")]
pub enum LatentDtype {
    /// As they come (float32): bit for bit what the UNet made.
    #[default]
    #[enum_value(name = "float32: as the latents come, bit for bit", nick = "f32")]
    F32 = 0,
    /// Half the bytes; the receiver widens them back to float32.
    #[enum_value(
        name = "float16: half the bytes, rounded to float16 (the decoded picture may differ in the last bits)",
        nick = "f16"
    )]
    F16 = 1,
}

impl From<LatentDtype> for i2i_core::tensor::Dtype {
    fn from(d: LatentDtype) -> Self {
        match d {
            LatentDtype::F32 => i2i_core::tensor::Dtype::F32,
            LatentDtype::F16 => i2i_core::tensor::Dtype::F16,
        }
    }
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "zmqmsgpacksink",
        gst::Rank::NONE,
        ZmqMsgpackSink::static_type(),
    )
}
