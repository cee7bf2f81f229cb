// SPDX-License-Identifier: MPL-2.0
//! `zmqcollectsrc`: the primary's collector. Receives the workers' results (PULL), puts
//! them back in index order with a fixed playout delay, and outputs them at the source's
//! pace with each frame's original timestamp.

use gst::glib;
use gst::prelude::*;

mod imp;

glib::wrapper! {
    pub struct ZmqCollectSrc(ObjectSubclass<imp::ZmqCollectSrc>)
        @extends gst_base::PushSrc, gst_base::BaseSrc, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "zmqcollectsrc",
        gst::Rank::NONE,
        ZmqCollectSrc::static_type(),
    )
}
