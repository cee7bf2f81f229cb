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

/**
 * SECTION:element-i2idecode
 * @see_also: i2itransform
 *
 * The VAE decoder (KL or TAESD) of a diffusion model on latent frames from
 * `i2itransform output=latent`, with the same bits the transform alone would give, so the
 * UNet and the decoder can run on different machines or GPUs (latents travel over ZeroMQ with
 * `zmqmsgpacksink` / `zmqmsgpacksrc`). `model` is the model folder the latents come from.
 * A frame that does not match its caps is dropped and counted (`dropped-invalid`). See
 * docs/element.md.
 *
 * ## Example launch line
 *
 * ```shell
 * gst-launch-1.0 videotestsrc num-buffers=100 ! videoconvert \
 *   ! i2itransform model=models/demo output=latent ! i2idecode model=models/demo \
 *   ! videoconvert ! autovideosink
 * ```
 *
 * The transform's UNet and its decoder as two elements.
 */
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
