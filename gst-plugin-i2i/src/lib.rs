// SPDX-License-Identifier: MPL-2.0
//! Real-time image-to-image on ONNX Runtime: `i2itransform` (diffusion), `i2idecode` (its VAE
//! decoder on latent frames), `onnxtransform` (any image-to-image ONNX model) and `settingssrc`.

use gst::glib;
use gst::prelude::*;

pub mod diffusion;
mod i2idecode;
pub mod i2itransform;
pub mod infer;
pub mod onnxtransform;
pub mod preprocess;
pub mod runtime;
mod settingssrc;

/// The properties renamed for the one vocabulary (docs/properties.md): their old names
/// still work for one release, warning once per element.
pub fn renamed_properties() -> Vec<i2i_compat::ElementAlias> {
    settingssrc::RENAMED
        .iter()
        .map(|a| i2i_compat::ElementAlias {
            element: "settingssrc",
            old: a.old,
            new: a.new,
        })
        .collect()
}

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    // The enums of the transforms' properties are marked where they register; this one is
    // settingssrc's.
    i2i_core::zmq_endpoint::ReceiveSocketType::static_type()
        .mark_as_plugin_api(gst::PluginAPIFlags::empty());
    i2itransform::register(plugin)?;
    onnxtransform::register(plugin)?;
    i2idecode::register(plugin)?;
    settingssrc::register(plugin)?;
    Ok(())
}

gst::plugin_define!(
    i2i,
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
