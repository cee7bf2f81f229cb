// SPDX-License-Identifier: MPL-2.0
//! WebRTC in and out for i2i: `i2iwhipsrc` (a WHIP endpoint whose publisher's video comes out
//! as raw frames) and `i2iwhepsink` (a WHEP endpoint serving any number of browser viewers),
//! thin bins around gst-plugins-rs's `whipserversrc` and `whepserversink`, whose WebRTC is
//! webrtcbin's. This plugin also registers those upstream elements (and `whipclientsink`,
//! `webrtcsink`, `webrtcsrc`) so that set-up builds one crate and gst-launch finds them all.

use gst::glib;
use gst::prelude::*;

mod endpoint;
mod loopback;
mod offer;
pub mod whepsink;
pub mod whipsrc;

/// The properties renamed for the one vocabulary (docs/properties.md): their old names
/// still work for one release, warning once per element.
pub fn renamed_properties() -> Vec<i2i_compat::ElementAlias> {
    whepsink::RENAMED
        .iter()
        .map(|a| i2i_compat::ElementAlias {
            element: "i2iwhepsink",
            old: a.old,
            new: a.new,
        })
        .collect()
}

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    // The enums the properties use, for gst-inspect-1.0 and the documentation.
    whipsrc::BusyPolicy::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    whepsink::Codec::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    // reqwest/warp need a rustls crypto provider; the upstream plugin_init installs it, and
    // registering its elements from here skips that init.
    let _ = rustls::crypto::ring::default_provider().install_default();
    gstrswebrtc::webrtcsink::register(plugin)?;
    gstrswebrtc::webrtcsrc::register(Some(plugin))?;
    whipsrc::register(plugin)?;
    whepsink::register(plugin)?;
    Ok(())
}

gst::plugin_define!(
    webrtci2i,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MPL",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    // Origin: these plugins have no package origin of their own; they are built from source.
    "i2i plugins built from source (README.md)",
    env!("BUILD_REL_DATE")
);
