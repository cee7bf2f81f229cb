// SPDX-License-Identifier: MPL-2.0
//! The `onnxtransform` element on the shared inference base ([`crate::infer::element`]):
//! its properties, how it binds the model to the stream (model and output sizes, the
//! input tensor's values), its start and stop; `task.rs` holds what its task and output
//! thread do with the model, `model.rs` the model binding.
//!
//! Threads, as in `i2itransform`: the upstream streaming thread converts each frame to RGB8
//! at the model size and to the input tensor's values, and queues it (blocking while
//! `max-queue` frames wait, or dropping the oldest on live input); the src pad's task
//! collects batches of `batch-size` and only runs the model; an output thread turns the
//! output tensors into buffers of the output format and pushes them.

use std::path::PathBuf;
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::model::{
    self, ImageModel, ModelOptions, NormalizationOverrides, OutPicture, Postprocess, Preprocess,
    format_triple, parse_triple,
};
use super::task::{ModelInput, Worker};
use super::{ChannelOrder, Layout};
use crate::infer::convert::{
    InputConverter, OutputConverter, SINK_FORMATS, SRC_FORMATS, converter_threads,
};
use crate::infer::element::Rendered;
use crate::infer::element::{
    InferBase, InferElement, InferStats, LatencySettings, video_template_caps, with_framerate,
};
use crate::infer::input::{Deferred, InputState, Queued, RgbFrame};
use crate::infer::pads::{InferElementExt, sink_pad_builder, src_pad_builder};
use crate::infer::props::{RuntimeSettings, StreamSettings, stats_param_spec};
use crate::infer::stats::Stats;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "onnxtransform",
        gst::DebugColorFlags::empty(),
        Some("Image-to-image ONNX model"),
    )
});

const DEFAULT_BATCH_SIZE: u32 = 1;
const MAX_SIZE: u32 = 8192;
const MAX_BATCH_SIZE: u32 = 64;
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub model: Option<String>,
    pub width: u32,
    pub height: u32,
    pub batch_size: u32,
    pub runtime: RuntimeSettings,
    pub stream: StreamSettings,
    pub overrides: NormalizationOverrides,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            model: None,
            width: 0,
            height: 0,
            batch_size: DEFAULT_BATCH_SIZE,
            runtime: RuntimeSettings::default(),
            stream: StreamSettings::default(),
            overrides: NormalizationOverrides::default(),
        }
    }
}

/// Streaming-thread side: the model's preprocessing for the current caps.
#[derive(Default)]
struct ModelSizes {
    preprocess: Option<Preprocess>,
    /// Model input and output sizes for the current caps.
    sizes: Option<((u32, u32), (u32, u32))>,
}

pub struct OnnxTransform {
    settings: Mutex<Settings>,
    base: InferBase<Self>,
    model_sizes: Mutex<ModelSizes>,
    /// Output thread side: the tensor-to-pixels mapping.
    post: Mutex<Option<Postprocess>>,
}

#[glib::object_subclass]
impl ObjectSubclass for OnnxTransform {
    const NAME: &'static str = "GstOnnxTransform";
    type Type = super::OnnxTransform;
    type ParentType = gst::Element;

    fn with_class(klass: &Self::Class) -> Self {
        let sinkpad =
            sink_pad_builder::<OnnxTransform>(&klass.pad_template("sink").unwrap()).build();
        let srcpad = src_pad_builder::<OnnxTransform>(&klass.pad_template("src").unwrap()).build();
        OnnxTransform {
            settings: Mutex::new(Settings::default()),
            base: InferBase::new(sinkpad, srcpad),
            model_sizes: Mutex::new(ModelSizes::default()),
            post: Mutex::new(None),
        }
    }
}

impl InferElement for OnnxTransform {
    type Data = ModelInput;
    type Picture = OutPicture;
    type Worker = Worker;
    type StatsExtra = ();

    const OUTPUT_THREAD: &'static str = "onnx-output";
    const STATS_NAME: &'static str = "onnxtransform-stats";

    fn cat() -> gst::DebugCategory {
        *CAT
    }

    fn base(&self) -> &InferBase<Self> {
        &self.base
    }

    fn stream_settings(&self) -> StreamSettings {
        self.settings.lock().unwrap().stream
    }

    fn latency_settings(&self) -> LatencySettings {
        let s = self.settings.lock().unwrap();
        LatencySettings {
            latency_frames: 0,
            batch_size: s.batch_size as usize,
        }
    }

    /// New input caps: the model size (fixed, else `width` x `height`, else the input's),
    /// the output size (declared, else from one run of the model) and the output caps.
    fn set_sink_caps(&self, caps: &gst::CapsRef) -> Result<Deferred, String> {
        let in_info = gst_video::VideoInfo::from_caps(caps)
            .map_err(|e| format!("input caps {caps} are not raw video: {e}"))?;
        let (want, mode) = {
            let s = self.settings.lock().unwrap();
            let w = if s.width > 0 {
                s.width
            } else {
                in_info.width()
            };
            let h = if s.height > 0 {
                s.height
            } else {
                in_info.height()
            };
            ((w, h), s.stream.resize_mode)
        };
        let (model_size, out_size, pre) = {
            let mut guard = self.base.worker.lock().unwrap();
            let w = guard
                .as_mut()
                .ok_or_else(|| "the model is not loaded".to_string())?;
            let model_size = w.model.model_size(want);
            let out_size = w
                .model
                .output_size(model_size.0, model_size.1)
                .map_err(|e| {
                    format!(
                        "the model does not run at {}x{}: {e}. Set width/height to a size it takes",
                        model_size.0, model_size.1
                    )
                })?;
            (model_size, out_size, w.model.preprocess())
        };
        let conv = InputConverter::new(
            &in_info,
            model_size.0,
            model_size.1,
            mode,
            converter_threads(),
        )?;
        let upstream_live = self.query_upstream_live();
        let (out_caps, out_info) = self.negotiate_output(in_info.fps(), out_size)?;
        gst::info!(
            CAT,
            imp = self,
            "input {caps} -> model {}x{} -> output {out_caps}",
            model_size.0,
            model_size.1
        );
        {
            let mut m = self.model_sizes.lock().unwrap();
            m.preprocess = Some(pre);
            m.sizes = Some((model_size, out_size));
        }
        self.set_input(Some(conv), in_info.fps(), upstream_live);
        Ok(Deferred::Caps(gst::event::Caps::new(&out_caps), out_info))
    }

    fn read_frame(
        &self,
        buffer: &gst::BufferRef,
        input: &InputState,
        _tag: u64,
        _running_time: Option<gst::ClockTime>,
    ) -> Result<Option<ModelInput>, gst::FlowError> {
        let Some(RgbFrame {
            rgb,
            width: w,
            height: h,
        }) = self.convert_video(buffer, input)?
        else {
            return Ok(None);
        };
        let m = self.model_sizes.lock().unwrap();
        let Some(pre) = m.preprocess.as_ref() else {
            return Err(gst::FlowError::Flushing);
        };
        Ok(Some(ModelInput {
            data: pre.run(&rgb, w as usize, h as usize),
            width: w as usize,
            height: h as usize,
        }))
    }

    fn output_caps(&self, fps: Option<gst::Fraction>, size: Option<(u32, u32)>) -> gst::Caps {
        let size = size.or(self.model_sizes.lock().unwrap().sizes.map(|s| s.1));
        let range = gst::IntRange::new(1, MAX_SIZE as i32 * 8);
        let b = gst::Caps::builder("video/x-raw")
            .field("format", gst::List::new(SRC_FORMATS))
            .field("pixel-aspect-ratio", gst::Fraction::new(1, 1));
        let b = match size {
            Some((w, h)) => b.field("width", w as i32).field("height", h as i32),
            None => b.field("width", range).field("height", range),
        };
        with_framerate(b, fps)
    }

    fn negotiate_output(
        &self,
        fps: gst::Fraction,
        size: (u32, u32),
    ) -> Result<(gst::Caps, gst_video::VideoInfo), String> {
        let caps = self.downstream_caps(
            fps,
            size,
            ". Add videoconvert/videoscale after onnxtransform",
        )?;
        let info = gst_video::VideoInfo::from_caps(&caps)
            .map_err(|e| format!("cannot use output caps {caps}: {e}"))?;
        Ok((caps, info))
    }

    fn holds_frames(w: &Worker) -> bool {
        !w.batch.is_empty()
    }

    fn task_frame(&self, w: &mut Worker, f: Queued<ModelInput>) -> Result<(), gst::FlowError> {
        w.batch_frame(self, f)
    }

    fn task_event(&self, w: &mut Worker, d: Deferred) -> Result<(), gst::FlowError> {
        w.batch_event(self, d)
    }

    fn task_drain(&self, w: &mut Worker) -> Result<(), gst::FlowError> {
        w.run_batch(self)
    }

    fn flush_worker(&self, w: &mut Worker) -> (usize, Vec<Deferred>) {
        let dropped = w.batch.len();
        w.batch.clear();
        (dropped, std::mem::take(&mut w.deferred))
    }

    /// Output thread: the model's output tensor as RGB8 at the negotiated size.
    fn render(&self, pic: &OutPicture, conv: &OutputConverter) -> Result<Rendered, gst::FlowError> {
        let info = conv.out_info();
        if (pic.width as u32, pic.height as u32) != (info.width(), info.height()) {
            gst::element_imp_error!(
                self,
                gst::StreamError::Failed,
                (
                    "The model gave a {}x{} picture, {}x{} were negotiated",
                    pic.width,
                    pic.height,
                    info.width(),
                    info.height()
                ),
                ["A model whose output size changes from frame to frame is not supported"]
            );
            return Err(gst::FlowError::Error);
        }
        let post = self.post.lock().unwrap();
        let Some(post) = post.as_ref() else {
            gst::debug!(CAT, imp = self, "stopped: no postprocessing");
            return Err(gst::FlowError::Flushing);
        };
        let mut rgb = Vec::new();
        post.run(pic, &mut rgb);
        Ok(Rendered::Rgb(rgb))
    }

    fn load(&self) -> Result<(), gst::StateChangeError> {
        let s = self.settings.lock().unwrap().clone();
        let Some(model) = s.model.clone().filter(|m| !m.is_empty()) else {
            gst::element_imp_error!(
                self,
                gst::ResourceError::NotFound,
                ("No model set"),
                [
                    "Set the model property to an .onnx file with one image input and one image output"
                ]
            );
            return Err(gst::StateChangeError);
        };
        let intra_threads = s.runtime.intra_threads();
        let opts = ModelOptions {
            file: PathBuf::from(&model),
            execution_provider: s.runtime.execution_provider,
            device_id: s.runtime.device_id,
            fp16: s.runtime.fp16,
            engine_cache_dir: s.runtime.engine_cache_dir.clone().map(Into::into),
            intra_threads,
            overrides: s.overrides.clone(),
            cpu_arena: s.runtime.cpu_arena,
        };
        let started = Instant::now();
        let m = ImageModel::load(&opts).map_err(|e| {
            gst::element_imp_error!(
                self,
                gst::LibraryError::Init,
                ("Could not load the model {}: {}", model, e),
                ["{:?}", e]
            );
            gst::StateChangeError
        })?;
        let provider = m.provider.nick();
        let load_time = started.elapsed();
        gst::info!(CAT, imp = self, "{m:?} loaded in {load_time:?}");
        let fixed = |v: Option<usize>| v.map_or(-1, |v| v as i64);
        let started_msg = gst::Structure::builder("onnxtransform-started")
            .field("provider", provider)
            .field("model", &model)
            .field("input", &m.input.name)
            .field("input-type", m.input.elem.name())
            .field(
                "layout",
                if m.input.layout == model::Layout::Nhwc {
                    "nhwc"
                } else {
                    "nchw"
                },
            )
            .field("channels", m.input.channels as u32)
            .field("input-width", fixed(m.input.width))
            .field("input-height", fixed(m.input.height))
            .field("output", &m.output.name)
            .field("output-type", m.output.elem.name())
            .field("scale", m.norm.scale as f64)
            .field("mean", format_triple(&m.norm.mean))
            .field("std", format_triple(&m.norm.std))
            .field(
                "channel-order",
                if m.norm.order == model::ChannelOrder::Bgr {
                    "bgr"
                } else {
                    "rgb"
                },
            )
            .field("batch-size", s.batch_size)
            .field("threads", intra_threads as u32)
            .field("load-ms", load_time.as_secs_f64() * 1000.0)
            .build();
        self.post_started(started_msg);
        self.reset_for_start(Stats::started(provider, s.batch_size as usize, 0));
        *self.model_sizes.lock().unwrap() = ModelSizes::default();
        *self.post.lock().unwrap() = Some(m.postprocess());
        *self.base.worker.lock().unwrap() = Some(Worker::new(m, s.batch_size as usize));
        Ok(())
    }

    fn unload(&self) {
        *self.post.lock().unwrap() = None;
        *self.model_sizes.lock().unwrap() = ModelSizes::default();
    }
}

impl ObjectImpl for OnnxTransform {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("model")
                    .nick("Model file")
                    .blurb("An .onnx file with one image input and one image output (NCHW or NHWC, 1 or 3 channels, float32, float16 or uint8); model.json next to model.onnx may give scale, mean, std, channel-order, output-scale and layout")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("width")
                    .nick("Width")
                    .blurb("Width the model runs at when its input size is dynamic; 0 = the input's width. Ignored for a model with a fixed size")
                    .maximum(MAX_SIZE)
                    .default_value(0)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("height")
                    .nick("Height")
                    .blurb("Height the model runs at when its input size is dynamic; 0 = the input's height. Ignored for a model with a fixed size")
                    .maximum(MAX_SIZE)
                    .default_value(0)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecDouble::builder("scale")
                    .nick("Scale")
                    .blurb("Input value = (pixel * scale - mean) / std, pixels 0..255; 0 = from model.json, else 1/255. Float models only")
                    .minimum(0.0)
                    .maximum(1e6)
                    .default_value(0.0)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("mean")
                    .nick("Mean")
                    .blurb("Per channel (R,G,B) mean subtracted after scaling, e.g. 0.485,0.456,0.406; empty = from model.json, else 0")
                    .default_value(Some(""))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("std")
                    .nick("Standard deviation")
                    .blurb("Per channel (R,G,B) divisor after the mean, e.g. 0.229,0.224,0.225; empty = from model.json, else 1")
                    .default_value(Some(""))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("channel-order", ChannelOrder::Auto)
                    .nick("Channel order")
                    .blurb("Order of the colour channels in the model's tensors")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("layout", Layout::Auto)
                    .nick("Layout")
                    .blurb("Where the channels are in the model's tensors")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecDouble::builder("output-scale")
                    .nick("Output scale")
                    .blurb("Output pixel = value * output-scale; 0 = from model.json, else the inverse of the input mapping ((value * std + mean) / scale)")
                    .minimum(0.0)
                    .maximum(1e6)
                    .default_value(0.0)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("batch-size")
                    .nick("Batch size")
                    .blurb("Frames per model call (a model with a fixed batch of 1 is called once per frame)")
                    .minimum(1)
                    .maximum(MAX_BATCH_SIZE)
                    .default_value(DEFAULT_BATCH_SIZE)
                    .mutable_ready()
                    .build(),
            ]
            .into_iter()
            .chain(RuntimeSettings::param_specs(true))
            .chain(StreamSettings::param_specs(OnnxTransform::STATS_NAME))
            .chain([stats_param_spec("")])
            .collect()
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let name = pspec.name();
        if self.refused_while_running(pspec) {
            return;
        }
        let mut s = self.settings.lock().unwrap();
        if s.runtime.set_property(name, value) {
            return;
        }
        if s.stream.set_property(name, value) {
            let stream = s.stream;
            drop(s);
            self.stream_settings_changed(&stream);
            return;
        }
        let text = || value.get::<Option<String>>().unwrap().unwrap_or_default();
        let positive = |v: f64| (v > 0.0).then_some(v as f32);
        match name {
            "model" => s.model = value.get().unwrap(),
            "width" => s.width = value.get().unwrap(),
            "height" => s.height = value.get().unwrap(),
            "scale" => s.overrides.scale = positive(value.get().unwrap()),
            "output-scale" => s.overrides.output_scale = positive(value.get().unwrap()),
            "mean" | "std" => {
                let t = text();
                let parsed = if t.trim().is_empty() {
                    Ok(None)
                } else {
                    parse_triple(name, &t).and_then(|v| {
                        if name == "std" && v.contains(&0.0) {
                            Err(format!("std \"{t}\" refused: a divisor of 0"))
                        } else {
                            Ok(Some(v))
                        }
                    })
                };
                match parsed {
                    Ok(v) if name == "mean" => s.overrides.mean = v,
                    Ok(v) => s.overrides.std = v,
                    Err(e) => {
                        drop(s);
                        self.refuse(&e);
                    }
                }
            }
            "channel-order" => {
                s.overrides.order = match value.get::<ChannelOrder>().unwrap() {
                    ChannelOrder::Auto => None,
                    ChannelOrder::Rgb => Some(model::ChannelOrder::Rgb),
                    ChannelOrder::Bgr => Some(model::ChannelOrder::Bgr),
                }
            }
            "layout" => {
                s.overrides.layout = match value.get::<Layout>().unwrap() {
                    Layout::Auto => None,
                    Layout::Nchw => Some(model::Layout::Nchw),
                    Layout::Nhwc => Some(model::Layout::Nhwc),
                }
            }
            "batch-size" => s.batch_size = value.get().unwrap(),
            _ => unreachable!("property {name} is not registered"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let name = pspec.name();
        if let Some(v) = self.base_property(name) {
            return v;
        }
        let s = self.settings.lock().unwrap();
        if let Some(v) = s.runtime.property(name).or_else(|| s.stream.property(name)) {
            return v;
        }
        let o = &s.overrides;
        match name {
            "model" => s.model.to_value(),
            "width" => s.width.to_value(),
            "height" => s.height.to_value(),
            "scale" => (o.scale.unwrap_or(0.0) as f64).to_value(),
            "output-scale" => (o.output_scale.unwrap_or(0.0) as f64).to_value(),
            "mean" => o
                .mean
                .map(|v| format_triple(&v))
                .unwrap_or_default()
                .to_value(),
            "std" => o
                .std
                .map(|v| format_triple(&v))
                .unwrap_or_default()
                .to_value(),
            "channel-order" => match o.order {
                None => ChannelOrder::Auto,
                Some(model::ChannelOrder::Rgb) => ChannelOrder::Rgb,
                Some(model::ChannelOrder::Bgr) => ChannelOrder::Bgr,
            }
            .to_value(),
            "layout" => match o.layout {
                None | Some(model::Layout::Auto) => Layout::Auto,
                Some(model::Layout::Nchw) => Layout::Nchw,
                Some(model::Layout::Nhwc) => Layout::Nhwc,
            }
            .to_value(),
            "batch-size" => s.batch_size.to_value(),
            name => unreachable!("property {name} is not registered"),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        self.add_pads(&[]);
    }
}

impl GstObjectImpl for OnnxTransform {}

impl ElementImpl for OnnxTransform {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "ONNX image-to-image",
                "Filter/Effect/Video",
                "Runs an image-to-image ONNX model (style transfer, super-resolution, ...) on each frame on ONNX Runtime, batched, with the live drop policy of i2itransform",
                "i2i developers",
            )
        });
        Some(&*META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            vec![
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &video_template_caps(&SINK_FORMATS),
                )
                .unwrap(),
                gst::PadTemplate::new(
                    "src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &video_template_caps(&SRC_FORMATS),
                )
                .unwrap(),
            ]
        });
        TEMPLATES.as_ref()
    }

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        self.change_state_loading(transition)
    }
}
