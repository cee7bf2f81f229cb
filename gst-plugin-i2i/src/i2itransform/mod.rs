// SPDX-License-Identifier: MPL-2.0
//! `i2itransform`: StreamDiffusion-style img2img on ONNX Runtime as a GStreamer element.
//!
//! ```text
//! ... ! jpegdec ! i2itransform model=models/demo prompt="..." ! zmqmsgpacksink
//! ```
//!
//! Sink: raw video (RGB, RGBx, RGBA, BGR, BGRx, BGRA, I420, NV12, YUY2, UYVY, GRAY8), any
//! size, resized to `width` x `height` (stretched, cropped or fitted: `resize-mode`), or to
//! the input's own size with `size-from-input`. Src: RGB (RGBA or I420 when downstream asks) at the model size,
//! one output frame per input frame with its timestamps, offset and metas. Inference
//! runs on the src pad's task behind a queue of `max-queue` frames. A second sink pad,
//! `settings`, takes `application/x-i2i-settings` JSON updates applied at the next batch.
//! Request pads `control_%u` feed the ControlNets of a ControlNet model (`control.rs`).

/**
 * SECTION:element-i2itransform
 * @see_also: settingssrc, i2idecode, onnxtransform
 *
 * StreamDiffusion-style diffusion image-to-image on ONNX Runtime (CPU, CUDA or TensorRT):
 * each frame is transformed at `width` x `height` by the model in `model` (a diffusers ONNX
 * folder), steered by `prompt`, `seed`, `t-index-list` and the guidance settings, which may
 * change while it plays (directly, or as JSON on its `settings` pad from `settingssrc`), with
 * `transition-frames` of smooth change. Inference runs on its own thread behind a queue of
 * `max-queue` frames; on live input the oldest frame is dropped to keep up (`drop-frames`).
 * ControlNet models take control pictures on `control_%u` pads or made from the frame. Stats
 * every `stats-interval` as `i2itransform-stats` messages. See docs/element.md.
 *
 * ## Example launch line
 *
 * ```shell
 * gst-launch-1.0 v4l2src ! videoconvert \
 *   ! i2itransform model=models/demo prompt="a neon sunset over the ocean" \
 *   ! videoconvert ! autovideosink
 * ```
 *
 * A camera, transformed live.
 */
use gst::glib;
use gst::prelude::*;

mod control;
mod control_pads;
mod imp;
mod ipadapter_pad;
pub mod live;
mod output;
mod task;
mod worker;

use crate::runtime;
use i2i_core::infer::{DropFrames, ExecutionProvider, ResizeMode};
use i2i_core::settings::CfgType;
use i2i_core::settings::blend::BlendMode;
use i2i_core::tensor::LATENT_CAPS_NAME;

glib::wrapper! {
    pub struct I2iTransform(ObjectSubclass<imp::I2iTransform>) @extends gst::Element, gst::Object;
}

/// The `output` property: pictures, or the final latents for a decoder elsewhere.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstI2iOutput")]
pub enum OutputMode {
    #[default]
    #[enum_value(name = "Pixels: decoded pictures (video/x-raw)", nick = "pixels")]
    Pixels = 0,
    #[enum_value(
        name = "Latent: the final latents, the VAE decoder's input (application/x-i2i-latent), for i2idecode",
        nick = "latent"
    )]
    Latent = 1,
}

/// Caps of latent frames for pictures of `w` x `h`.
pub fn latent_caps(w: u32, h: u32, scaling_factor: f32, fps: Option<gst::Fraction>) -> gst::Caps {
    let b = gst::Caps::builder(LATENT_CAPS_NAME)
        .field("dtype", "float32")
        .field("layout", "nchw")
        .field("channels", 4i32)
        .field("width", (w / 8) as i32)
        .field("height", (h / 8) as i32)
        .field("image-width", w as i32)
        .field("image-height", h as i32)
        .field("scaling-factor", scaling_factor as f64);
    match fps {
        Some(f) => b.field("framerate", f).build(),
        None => b.build(),
    }
}

static ENGINE_CAT: std::sync::LazyLock<gst::DebugCategory> = std::sync::LazyLock::new(|| {
    gst::DebugCategory::new(
        "i2i-engine",
        gst::DebugColorFlags::empty(),
        Some("Diffusion engine (model loading, execution providers)"),
    )
});

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    // The engine's messages (provider chosen, TensorRT builds) go to the GStreamer log.
    runtime::set_logger(|level, msg| match level {
        runtime::LogLevel::Debug => gst::debug!(ENGINE_CAT, "{msg}"),
        runtime::LogLevel::Info => gst::info!(ENGINE_CAT, "{msg}"),
        runtime::LogLevel::Warning => gst::warning!(ENGINE_CAT, "{msg}"),
        runtime::LogLevel::Error => gst::error!(ENGINE_CAT, "{msg}"),
    });
    CfgType::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    BlendMode::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    ResizeMode::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    DropFrames::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    OutputMode::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    ExecutionProvider::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(
        Some(plugin),
        "i2itransform",
        gst::Rank::NONE,
        I2iTransform::static_type(),
    )
}
