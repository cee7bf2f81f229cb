// SPDX-License-Identifier: MPL-2.0
//! `settingssrc`: receives live settings over ZeroMQ and pushes them as
//! `application/x-i2i-settings` buffers for i2itransform's `settings` pad.

use gst::glib;
use gst::prelude::*;

mod imp;

glib::wrapper! {
    pub struct SettingsSrc(ObjectSubclass<imp::SettingsSrc>)
        @extends gst_base::PushSrc, gst_base::BaseSrc, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "settingssrc",
        gst::Rank::NONE,
        SettingsSrc::static_type(),
    )
}
