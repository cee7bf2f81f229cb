// SPDX-License-Identifier: MPL-2.0
//! `onnxtransform`: any image-to-image ONNX model (style transfer, super-resolution,
//! colour grading, depth or matting with one image output) as a GStreamer element.
//!
//! ```text
//! ... ! videoconvert ! onnxtransform model=models/style-tiny/model.onnx ! videoconvert ! ...
//! ```
//!
//! Sink: the raw video formats `i2itransform` takes, resized to the model's size (its fixed
//! size, else `width` x `height`, else the input's own size). Src: RGB (RGBA or I420 when
//! downstream asks) at the size of the model's output picture. The model has one image
//! input and one image output, NCHW or NHWC, float32, float16 or uint8; scale, mean / std
//! and channel order come from the properties or from `model.json` next to `model.onnx`.
//! Threads, queues, batching, execution providers, the live drop policy and the stats are
//! those of `i2itransform` (shared in [`crate::infer`]).

/**
 * SECTION:element-onnxtransform
 * @see_also: i2itransform
 *
 * Any image-to-image ONNX model (style transfer, super-resolution, colour grading, depth or
 * matting with one image output) on the video: NCHW or NHWC, float32, float16 or uint8, a fixed
 * or dynamic size; scale, mean, std and channel order from the properties or `model.json`
 * next to the model. The queue, batching, execution providers, live drop policy and stats are
 * `i2itransform`'s. See docs/onnxtransform.md.
 *
 * ## Example launch line
 *
 * ```shell
 * gst-launch-1.0 videotestsrc ! videoconvert \
 *   ! onnxtransform model=models/style-tiny/model.onnx ! videoconvert ! autovideosink
 * ```
 *
 * A style-transfer model on a test picture.
 */
use gst::glib;
use gst::prelude::*;

mod imp;
pub mod model;
mod task;

glib::wrapper! {
    pub struct OnnxTransform(ObjectSubclass<imp::OnnxTransform>) @extends gst::Element, gst::Object;
}

/// The `channel-order` property.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstOnnxChannelOrder")]
pub enum ChannelOrder {
    #[default]
    #[enum_value(name = "Auto: from model.json, else RGB", nick = "auto")]
    Auto = 0,
    #[enum_value(name = "RGB", nick = "rgb")]
    Rgb = 1,
    #[enum_value(name = "BGR (OpenCV and Caffe models)", nick = "bgr")]
    Bgr = 2,
}

/// The `layout` property.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstOnnxLayout")]
pub enum Layout {
    #[default]
    #[enum_value(
        name = "Auto: from model.json, else the dimension of size 1 or 3 (NCHW when both are)",
        nick = "auto"
    )]
    Auto = 0,
    #[enum_value(name = "NCHW: batch, channels, height, width", nick = "nchw")]
    Nchw = 1,
    #[enum_value(name = "NHWC: batch, height, width, channels", nick = "nhwc")]
    Nhwc = 2,
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    ChannelOrder::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    Layout::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(
        Some(plugin),
        "onnxtransform",
        gst::Rank::NONE,
        OnnxTransform::static_type(),
    )
}
