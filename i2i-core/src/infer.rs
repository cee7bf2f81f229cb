// SPDX-License-Identifier: MPL-2.0
//! The choices the inference elements (`i2itransform`, `onnxtransform`, `i2idecode`) offer
//! as properties, and the diffusion engine's execution provider: defined once, GStreamer
//! enum types with the `glib` feature.

/// Which ONNX Runtime execution provider runs the graphs: the `execution-provider`
/// property, and the engine's load option.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default)]
#[cfg_attr(feature = "glib", derive(glib::Enum))]
#[cfg_attr(feature = "glib", enum_type(name = "GstI2iExecutionProvider"))]
#[repr(u32)]
pub enum ExecutionProvider {
    /// TensorRT, else CUDA, else CPU; the one chosen is logged and reported.
    #[default]
    #[cfg_attr(
        feature = "glib",
        enum_value(name = "Auto: TensorRT, else CUDA, else CPU", nick = "auto")
    )]
    Auto = 0,
    #[cfg_attr(feature = "glib", enum_value(name = "CPU", nick = "cpu"))]
    Cpu = 1,
    #[cfg_attr(
        feature = "glib",
        enum_value(name = "CUDA (an error when not available)", nick = "cuda")
    )]
    Cuda = 2,
    #[cfg_attr(
        feature = "glib",
        enum_value(name = "TensorRT (an error when not available)", nick = "tensorrt")
    )]
    TensorRt = 3,
}

impl ExecutionProvider {
    /// The name the `execution-provider` and `provider` properties and the stats use.
    pub fn nick(self) -> &'static str {
        match self {
            ExecutionProvider::Auto => "auto",
            ExecutionProvider::Cpu => "cpu",
            ExecutionProvider::Cuda => "cuda",
            ExecutionProvider::TensorRt => "tensorrt",
        }
    }
}

impl std::fmt::Display for ExecutionProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.nick())
    }
}

/// The `resize-mode` property: how the input picture fills the model size.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default)]
#[cfg_attr(feature = "glib", derive(glib::Enum))]
#[cfg_attr(feature = "glib", enum_type(name = "GstI2iResizeMode"))]
#[repr(u32)]
pub enum ResizeMode {
    #[default]
    #[cfg_attr(
        feature = "glib",
        enum_value(
            name = "Stretch: the whole picture, aspect ratio not kept",
            nick = "stretch"
        )
    )]
    Stretch = 0,
    #[cfg_attr(
        feature = "glib",
        enum_value(
            name = "Crop: fill the model size, cutting the sides (or top and bottom) that stick out",
            nick = "crop"
        )
    )]
    Crop = 1,
    #[cfg_attr(
        feature = "glib",
        enum_value(
            name = "Fit: the whole picture with its aspect ratio, black borders around",
            nick = "fit"
        )
    )]
    Fit = 2,
}

/// The `drop-frames` property: what happens when frames arrive faster than inference.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default)]
#[cfg_attr(feature = "glib", derive(glib::Enum))]
#[cfg_attr(feature = "glib", enum_type(name = "GstI2iDropFrames"))]
#[repr(u32)]
pub enum DropFrames {
    #[default]
    #[cfg_attr(
        feature = "glib",
        enum_value(
            name = "Auto: drop the oldest waiting frame on live sources, keep every frame otherwise",
            nick = "auto"
        )
    )]
    Auto = 0,
    #[cfg_attr(
        feature = "glib",
        enum_value(
            name = "Never: keep every frame; upstream waits (files, offline work)",
            nick = "never"
        )
    )]
    Never = 1,
    #[cfg_attr(
        feature = "glib",
        enum_value(
            name = "Always: drop the oldest waiting frame whenever inference falls behind",
            nick = "always"
        )
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
