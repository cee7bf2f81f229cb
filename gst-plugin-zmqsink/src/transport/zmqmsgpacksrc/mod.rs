// SPDX-License-Identifier: MPL-2.0
//! `zmqmsgpacksrc`: receives `[timestamp_ms, index, jpg]` messages (and batch maps) and
//! pushes one `image/jpeg` buffer per frame.

/**
 * SECTION:element-zmqmsgpacksrc
 * @see_also: zmqmsgpacksink
 *
 * Receives `[timestamp_ms, index, jpg]` messages (and the original batch messages) and pushes
 * one `image/jpeg` buffer per frame, or latents as `application/x-i2i-latent`, with the frame's
 * original time as a `timestamp/x-unix` reference meta. It connects to `endpoint` (binds with
 * `bind=true`). Bad input (malformed, not JPEG, over `max-pixels` or `max-message-size`) is
 * dropped, counted by reason in `stats` (`dropped-<reason>`) and reported at most once a
 * second; the stream goes on. See docs/transport.md.
 *
 * ## Example launch line
 *
 * ```shell
 * gst-launch-1.0 zmqmsgpacksrc endpoint=tcp://localhost:5557 framerate=15/1 ! jpegdec \
 *   ! videoconvert ! autovideosink
 * ```
 *
 * Shows the stream a `zmqmsgpacksink` publishes on port 5557.
 */
use gst::glib;
use gst::prelude::*;

mod imp;

pub(crate) use imp::RENAMED;

glib::wrapper! {
    pub struct ZmqMsgpackSrc(ObjectSubclass<imp::ZmqMsgpackSrc>)
        @extends gst_base::PushSrc, gst_base::BaseSrc, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "zmqmsgpacksrc",
        gst::Rank::NONE,
        ZmqMsgpackSrc::static_type(),
    )
}
