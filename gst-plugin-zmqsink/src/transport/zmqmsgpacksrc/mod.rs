// SPDX-License-Identifier: MPL-2.0
//! `zmqmsgpacksrc`: receives `[timestamp_ms, index, jpg]` messages (and batch maps) and
//! pushes one `image/jpeg` buffer per frame.

use gst::glib;
use gst::prelude::*;

mod imp;

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
