// SPDX-License-Identifier: MPL-2.0
//! `i2iwhepsink`: a WHEP endpoint serving the video it receives to any number of browser viewers.

/**
 * SECTION:element-i2iwhepsink
 * @see_also: i2iwhipsrc, whepserversink
 *
 * A WHEP endpoint serving the video it receives to any number of browser viewers: encoded
 * once for all (`codec` h264 or vp8) or once per viewer; `playout-delay` holds every frame
 * the same fixed time so the viewers keep the source's timing; `max-viewers`, `max-pending`
 * and `connect-timeout` bound what viewers cost. A bin around gst-plugins-rs's
 * `whepserversink`. See docs/webrtc.md.
 *
 * ## Example launch line
 *
 * ```shell
 * gst-launch-1.0 videotestsrc is-live=true ! videoconvert \
 *   ! i2iwhepsink host-addr=http://127.0.0.1:8191
 * ```
 *
 * Serves a test picture at http://127.0.0.1:8191/whep/endpoint.
 */
use gst::glib;
use gst::prelude::*;

mod imp;

pub(crate) use imp::{Codec, RENAMED};

glib::wrapper! {
    pub struct WhepSink(ObjectSubclass<imp::WhepSink>) @extends gst::Bin, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "i2iwhepsink",
        gst::Rank::NONE,
        WhepSink::static_type(),
    )
}
