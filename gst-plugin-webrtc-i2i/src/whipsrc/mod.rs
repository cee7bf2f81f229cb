// SPDX-License-Identifier: MPL-2.0
//! `i2iwhipsrc`: a WHIP endpoint (browsers, OBS 30+) whose publisher's video comes out decoded.

/**
 * SECTION:element-i2iwhipsrc
 * @see_also: i2iwhepsink, whipserversrc
 *
 * A WHIP endpoint (browsers, OBS 30 and later) whose publisher's video (H264, VP8 or VP9)
 * comes out decoded on the `src` pad, publishers coming and going on one running pipeline.
 * Offers are checked before webrtcbin sees them; `token` asks publishers for a bearer token,
 * `allowed-origins` lets the named web pages in (CORS); `busy-policy` replaces or refuses a
 * second publisher. A bin around gst-plugins-rs's `whipserversrc`. See docs/webrtc.md.
 *
 * ## Example launch line
 *
 * ```shell
 * gst-launch-1.0 i2iwhipsrc host-addr=http://127.0.0.1:8190 ! videoconvert ! autovideosink
 * ```
 *
 * Shows what a browser or OBS publishes to http://127.0.0.1:8190/whip/endpoint.
 */
use gst::glib;
use gst::prelude::*;

mod imp;

pub(crate) use imp::BusyPolicy;

glib::wrapper! {
    pub struct WhipSrc(ObjectSubclass<imp::WhipSrc>) @extends gst::Bin, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "i2iwhipsrc",
        gst::Rank::NONE,
        WhipSrc::static_type(),
    )
}
