// SPDX-License-Identifier: MPL-2.0
//! `i2iwhepsink`: a WHEP endpoint serving the video it receives to any number of browser viewers.

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
