// SPDX-License-Identifier: MPL-2.0
//! `i2iwhipsrc`: a WHIP endpoint (browsers, OBS 30+) whose publisher's video comes out decoded.

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
