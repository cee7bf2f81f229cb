// SPDX-License-Identifier: MPL-2.0
//! What the output thread of `i2itransform` does with the engine's frames (the thread
//! itself is the shared one, [`crate::infer::output`]): pictures as RGB8 at the model size,
//! or with `output=latent` the final latents as they are.

use std::sync::atomic::Ordering;

use super::imp::I2iTransform;
use crate::diffusion::DecodedFrame;
use crate::infer::convert::OutputConverter;
use crate::infer::element::Rendered;

impl I2iTransform {
    pub(super) fn render_frame(&self, out: &DecodedFrame, conv: &OutputConverter) -> Rendered {
        let mut rgb = Vec::new();
        if self.latent.load(Ordering::SeqCst) {
            rgb.extend(out.decoded().iter().flat_map(|v| v.to_ne_bytes()));
            return Rendered::Buffer(gst::Buffer::from_mut_slice(rgb));
        }
        // The output is at the model size.
        let info = conv.out_info();
        out.to_rgb8(info.width(), info.height(), &mut rgb);
        // For a `feedback` ControlNet preprocessor (none with latent output).
        self.remember_output(&rgb);
        Rendered::Rgb(rgb)
    }
}
