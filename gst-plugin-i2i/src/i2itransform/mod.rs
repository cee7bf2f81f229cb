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
mod imp;
pub mod live;
mod output;
mod smooth;
mod task;

use crate::diffusion;
use crate::settings::blend;

glib::wrapper! {
    pub struct I2iTransform(ObjectSubclass<imp::I2iTransform>) @extends gst::Element, gst::Object;
}

/// The `cfg-type` property.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstI2iCfgType")]
pub enum CfgType {
    #[enum_value(name = "None: no classifier-free guidance", nick = "none")]
    None = 0,
    #[enum_value(
        name = "Full: the UNet also runs on the negative prompt (2n evaluations)",
        nick = "full"
    )]
    Full = 1,
    #[default]
    #[enum_value(
        name = "Self: residual CFG with the stock noise as negative (n evaluations)",
        nick = "self"
    )]
    SelfNegative = 2,
    #[enum_value(
        name = "Initialize: residual CFG initialised from the negative prompt (n + 1 evaluations)",
        nick = "initialize"
    )]
    Initialize = 3,
}

impl From<CfgType> for diffusion::CfgType {
    fn from(c: CfgType) -> Self {
        match c {
            CfgType::None => diffusion::CfgType::None,
            CfgType::Full => diffusion::CfgType::Full,
            CfgType::SelfNegative => diffusion::CfgType::SelfNegative,
            CfgType::Initialize => diffusion::CfgType::Initialize,
        }
    }
}

impl From<diffusion::CfgType> for CfgType {
    fn from(c: diffusion::CfgType) -> Self {
        match c {
            diffusion::CfgType::None => CfgType::None,
            diffusion::CfgType::Full => CfgType::Full,
            diffusion::CfgType::SelfNegative => CfgType::SelfNegative,
            diffusion::CfgType::Initialize => CfgType::Initialize,
        }
    }
}

/// The `blend-mode` property.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstI2iBlendMode")]
pub enum BlendMode {
    #[default]
    #[enum_value(name = "Linear: weighted mean", nick = "linear")]
    Linear = 0,
    #[enum_value(
        name = "Slerp: spherical interpolation, renormalised (per token row for prompts)",
        nick = "slerp"
    )]
    Slerp = 1,
}

impl From<BlendMode> for blend::BlendMode {
    fn from(m: BlendMode) -> Self {
        match m {
            BlendMode::Linear => blend::BlendMode::Linear,
            BlendMode::Slerp => blend::BlendMode::Slerp,
        }
    }
}

impl From<blend::BlendMode> for BlendMode {
    fn from(m: blend::BlendMode) -> Self {
        match m {
            blend::BlendMode::Linear => BlendMode::Linear,
            blend::BlendMode::Slerp => BlendMode::Slerp,
        }
    }
}

/// The `resize-mode` property: how the input picture fills the model size.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstI2iResizeMode")]
pub enum ResizeMode {
    #[default]
    #[enum_value(
        name = "Stretch: the whole picture, aspect ratio not kept",
        nick = "stretch"
    )]
    Stretch = 0,
    #[enum_value(
        name = "Crop: fill the model size, cutting the sides (or top and bottom) that stick out",
        nick = "crop"
    )]
    Crop = 1,
    #[enum_value(
        name = "Fit: the whole picture with its aspect ratio, black borders around",
        nick = "fit"
    )]
    Fit = 2,
}

/// The `drop-frames` property: what happens when frames arrive faster than inference.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstI2iDropFrames")]
pub enum DropFrames {
    #[default]
    #[enum_value(
        name = "Auto: drop the oldest waiting frame on live sources, keep every frame otherwise",
        nick = "auto"
    )]
    Auto = 0,
    #[enum_value(
        name = "Never: keep every frame; upstream waits (files, offline work)",
        nick = "never"
    )]
    Never = 1,
    #[enum_value(
        name = "Always: drop the oldest waiting frame whenever inference falls behind",
        nick = "always"
    )]
    Always = 2,
}

impl DropFrames {
    /// Whether frames that inference cannot keep up with are dropped, given whether the
    /// source upstream is live.
    pub fn drops(self, upstream_live: bool) -> bool {
        match self {
            DropFrames::Never => false,
            DropFrames::Always => true,
            DropFrames::Auto => upstream_live,
        }
    }
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

/// Caps name of latent frames: float32 `[1, channels, height, width]` (the VAE decoder's
/// input, already divided by `scaling-factor`), native byte order.
pub const LATENT_CAPS_NAME: &str = "application/x-i2i-latent";

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

/// The `execution-provider` property.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstI2iExecutionProvider")]
pub enum ExecutionProvider {
    #[default]
    #[enum_value(name = "Auto: TensorRT, else CUDA, else CPU", nick = "auto")]
    Auto = 0,
    #[enum_value(name = "CPU", nick = "cpu")]
    Cpu = 1,
    #[enum_value(name = "CUDA (an error when not available)", nick = "cuda")]
    Cuda = 2,
    #[enum_value(name = "TensorRT (an error when not available)", nick = "tensorrt")]
    TensorRt = 3,
}

impl From<ExecutionProvider> for diffusion::ExecutionProvider {
    fn from(p: ExecutionProvider) -> Self {
        match p {
            ExecutionProvider::Auto => diffusion::ExecutionProvider::Auto,
            ExecutionProvider::Cpu => diffusion::ExecutionProvider::Cpu,
            ExecutionProvider::Cuda => diffusion::ExecutionProvider::Cuda,
            ExecutionProvider::TensorRt => diffusion::ExecutionProvider::TensorRt,
        }
    }
}

/// Name of an execution provider as the `provider` property and the stats report it.
pub fn provider_name(p: diffusion::ExecutionProvider) -> &'static str {
    match p {
        diffusion::ExecutionProvider::Auto => "auto",
        diffusion::ExecutionProvider::Cpu => "cpu",
        diffusion::ExecutionProvider::Cuda => "cuda",
        diffusion::ExecutionProvider::TensorRt => "tensorrt",
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
    diffusion::set_logger(|level, msg| match level {
        diffusion::LogLevel::Debug => gst::debug!(ENGINE_CAT, "{msg}"),
        diffusion::LogLevel::Info => gst::info!(ENGINE_CAT, "{msg}"),
        diffusion::LogLevel::Warning => gst::warning!(ENGINE_CAT, "{msg}"),
        diffusion::LogLevel::Error => gst::error!(ENGINE_CAT, "{msg}"),
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
