// SPDX-License-Identifier: MPL-2.0
//! Real-time diffusion image-to-image on ONNX Runtime: `i2itransform` and `settingssrc`.

use gst::glib;

pub mod diffusion;
pub mod i2itransform;
pub mod preprocess;
pub mod settings;
mod settingssrc;

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    i2itransform::register(plugin)?;
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
