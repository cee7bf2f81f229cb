// SPDX-License-Identifier: MPL-2.0
//! `settingssrc`: receives live settings over ZeroMQ and pushes them as
//! `application/x-i2i-settings` buffers for i2itransform's `settings` pad.

use gst::glib;
use gst::prelude::*;

mod imp;

pub(crate) use imp::RENAMED;

/// The kind of ZeroMQ socket settingssrc receives on.
#[derive(Debug, Eq, PartialEq, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstI2iSettingsSocketType")]
pub enum SocketType {
    /// Subscribe to a PUB socket: i2i-prompt's state, or programs that publish.
    #[enum_value(
        name = "SUB: subscribe to a publisher (i2i-prompt, or programs with PUB)",
        nick = "sub"
    )]
    Sub = 0,
    /// Take messages from programs with PUSH sockets.
    #[enum_value(name = "PULL: take messages from programs with PUSH", nick = "pull")]
    Pull = 1,
}

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
