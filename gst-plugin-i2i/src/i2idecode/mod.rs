// SPDX-License-Identifier: MPL-2.0
//! `i2idecode`: the VAE decoder of a diffusion model (KL or TAESD) on latent frames, so that
//! the UNet and the decoder can run on different machines or GPUs.
//!
//! ```text
//! ... ! i2itransform model=models/demo output=latent ! i2idecode model=models/demo ! ...
//! ```
//!
//! Sink: `application/x-i2i-latent` (float32 `[1, 4, height, width]`, the decoder's input,
//! as `i2itransform output=latent` gives it). Src: RGB (RGBA or I420 when downstream asks)
//! at the picture size, with the same bits `i2itransform` alone would give.

use gst::glib;
use gst::prelude::*;

mod imp;

glib::wrapper! {
    pub struct I2iDecode(ObjectSubclass<imp::I2iDecode>) @extends gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "i2idecode",
        gst::Rank::NONE,
        I2iDecode::static_type(),
    )
}
