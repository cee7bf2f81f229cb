// SPDX-License-Identifier: MPL-2.0
//! The `i2idecode` element, on the shared inference base ([`crate::infer::element`]):
//! the streaming thread checks each latent frame against its caps and queues it, the
//! inference task runs only the VAE decoder, and the output thread turns the decoded
//! picture into the negotiated format and pushes it with the input's timestamps, flags and
//! metas, so that receiving, decoding and converting overlap.
//!
//! The decoder is loaded when the first caps arrive (their `image-width` x `image-height`)
//! and again when the size changes; the task takes the new one when those caps reach it. A
//! frame whose payload does not match the caps is dropped with a warning and counted; the
//! stream goes on. Latents that would decode to a picture over `max-pixels` never reach
//! the decoder (its memory grows with the picture: the demo model took 6.48 GB for one
//! 4096x4096 frame): no decoder is loaded for them, their frames are dropped and counted
//! as `dropped-oversize`, and the stream goes on with the next caps that fit.

use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use ort::value::Tensor;

use crate::diffusion::model::{VaeDecoder, read_scaling_factor};
use crate::diffusion::{LoadOptions, decoded_to_rgb8};
use crate::infer::convert::{OutputConverter, SRC_FORMATS};
use crate::infer::element::{InferBase, InferElement, LatencySettings};
use crate::infer::element::{OutItem, Rendered};
use crate::infer::input::{Deferred, InputState, Queued};
use crate::infer::pads::{InferElementExt, sink_pad_builder, src_pad_builder};
use crate::infer::props::{RuntimeSettings, StreamSettings, stats_param_spec};
use crate::infer::stats::Stats;
use crate::infer::task::InferTask;
use i2i_core::infer::DropFrames;
use i2i_core::rate_limit::RateLimit;
use i2i_core::tensor::LATENT_CAPS_NAME;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "i2idecode",
        gst::DebugColorFlags::empty(),
        Some("VAE decoder for latent frames"),
    )
});

/// Largest latent width or height taken (8192 pixels).
const MAX_LATENT: usize = 1024;
/// Warnings about bad frames: at most one per this interval (the rest are counted).
const WARN_INTERVAL: Duration = Duration::from_secs(2);
/// The largest picture decoded by default: 2048 x 2048 (SDXL's 1024 x 1024 and a
/// 1920 x 1088 picture fit; the decoder's memory grows with the picture).
pub const DEFAULT_MAX_PIXELS: u64 = 2048 * 2048;

#[derive(Debug, Clone)]
struct Settings {
    model: Option<String>,
    /// No `engine-cache-dir`: the decoder is not built with TensorRT engines cached.
    runtime: RuntimeSettings,
    /// No `resize-mode`: latents are decoded at their own size.
    stream: StreamSettings,
    max_pixels: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            model: None,
            runtime: RuntimeSettings::default(),
            stream: default_stream(),
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }
}

/// Every frame is decoded by default (a slow decoder makes upstream wait), and the stats
/// are posted at EOS only.
fn default_stream() -> StreamSettings {
    StreamSettings {
        drop_frames: DropFrames::Never,
        stats_interval_ms: 0,
        ..StreamSettings::default()
    }
}

/// What only `i2idecode` counts.
#[derive(Debug, Default)]
pub struct DecodeStats {
    /// Frames whose picture would be over `max-pixels`.
    dropped_oversize: u64,
}

/// What the caps say about each latent frame.
#[derive(Debug, Clone, Copy, PartialEq)]
struct LatentFormat {
    channels: usize,
    width: usize,
    height: usize,
    image_width: u32,
    image_height: u32,
}

impl LatentFormat {
    fn bytes(&self) -> usize {
        self.channels * self.width * self.height * 4
    }

    fn pixels(&self) -> u64 {
        self.image_width as u64 * self.image_height as u64
    }
}

fn parse_caps(caps: &gst::CapsRef) -> Result<(LatentFormat, Option<f64>, gst::Fraction), String> {
    let s = caps
        .structure(0)
        .filter(|s| s.name() == LATENT_CAPS_NAME)
        .ok_or_else(|| format!("caps {caps} are not {LATENT_CAPS_NAME}"))?;
    let int = |f: &str| -> Result<i32, String> {
        s.get::<i32>(f)
            .map_err(|_| format!("latent caps {caps} lack the integer field {f}"))
    };
    let dtype = s.get::<&str>("dtype").unwrap_or("float32");
    if dtype != "float32" {
        return Err(format!(
            "latent caps dtype {dtype} refused: i2idecode takes float32 latents"
        ));
    }
    let f = LatentFormat {
        channels: int("channels")?.max(0) as usize,
        width: int("width")?.max(0) as usize,
        height: int("height")?.max(0) as usize,
        image_width: s
            .get::<i32>("image-width")
            .unwrap_or(int("width")? * 8)
            .max(0) as u32,
        image_height: s
            .get::<i32>("image-height")
            .unwrap_or(int("height")? * 8)
            .max(0) as u32,
    };
    if f.channels != 4 {
        return Err(format!(
            "latent caps with {} channels refused: the VAE decoder takes 4",
            f.channels
        ));
    }
    if f.width == 0
        || f.height == 0
        || f.width > MAX_LATENT
        || f.height > MAX_LATENT
        || f.image_width as usize != 8 * f.width
        || f.image_height as usize != 8 * f.height
    {
        return Err(format!(
            "latent caps {caps} refused: width and height must be 1..={MAX_LATENT} and image-width x image-height 8 x width x height"
        ));
    }
    let fps = s
        .get::<gst::Fraction>("framerate")
        .unwrap_or(gst::Fraction::new(0, 1));
    Ok((f, s.get::<f64>("scaling-factor").ok(), fps))
}

/// Streaming-thread side: what the caps say, and the decoder loaded for them until the
/// task takes it.
#[derive(Default)]
struct Intake {
    format: Option<LatentFormat>,
    /// The caps' picture is over `max-pixels` (its frames are dropped): the limit.
    oversize: Option<u64>,
    /// The picture size of the last decoder loaded.
    loaded: Option<(u32, u32)>,
    /// A decoder loaded for new caps, for the task to take when those caps reach it.
    incoming: Option<VaeDecoder>,
    /// Warnings about dropped frames, one per [`WARN_INTERVAL`].
    warnings: Option<RateLimit>,
}

/// Task side: the decoder and its output tensor, reused frame to frame.
pub struct Worker {
    decoder: Option<VaeDecoder>,
    slot: [Option<Arc<Tensor<f32>>>; 1],
}

pub struct I2iDecode {
    settings: Mutex<Settings>,
    base: InferBase<Self>,
    intake: Mutex<Intake>,
}

#[glib::object_subclass]
impl ObjectSubclass for I2iDecode {
    const NAME: &'static str = "GstI2iDecode";
    type Type = super::I2iDecode;
    type ParentType = gst::Element;

    fn with_class(klass: &Self::Class) -> Self {
        let sinkpad = sink_pad_builder::<I2iDecode>(&klass.pad_template("sink").unwrap()).build();
        let srcpad = src_pad_builder::<I2iDecode>(&klass.pad_template("src").unwrap()).build();
        I2iDecode {
            settings: Mutex::new(Settings::default()),
            base: InferBase::new(sinkpad, srcpad),
            intake: Mutex::new(Intake::default()),
        }
    }
}

impl InferElement for I2iDecode {
    /// The latents of a frame.
    type Data = Vec<f32>;
    /// The decoder's output tensor, planar RGB in -1..1, shared with the decoder: it writes
    /// the next frame into it again only once the output thread has let go of it.
    type Picture = Arc<Tensor<f32>>;
    type Worker = Worker;
    type StatsExtra = DecodeStats;

    const OUTPUT_THREAD: &'static str = "i2idecode-output";
    const STATS_NAME: &'static str = "i2idecode-stats";

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
        LatencySettings {
            latency_frames: 0,
            batch_size: 1,
        }
    }

    fn stats_fields(
        &self,
        b: gst::structure::Builder,
        s: &Stats<DecodeStats>,
    ) -> gst::structure::Builder {
        let total = s.first_inference.unwrap_or_default() + s.inference_total;
        let avg = if s.batches > 0 {
            total.as_secs_f64() * 1000.0 / s.batches as f64
        } else {
            0.0
        };
        b.field("avg-decode-ms", avg)
            .field("dropped-oversize", s.extra.dropped_oversize)
            // Every drop is in the sum, this element's own reason too.
            .field("dropped", s.dropped() + s.extra.dropped_oversize)
    }

    fn load(&self) -> Result<(), gst::StateChangeError> {
        let model = self.settings.lock().unwrap().model.clone();
        if model.as_deref().is_none_or(str::is_empty) {
            gst::element_imp_error!(
                self,
                gst::ResourceError::NotFound,
                ("No model set"),
                ["Set the model property to the model directory the latents come from"]
            );
            return Err(gst::StateChangeError);
        }
        self.reset_for_start(Stats::started("", 1, 0));
        *self.intake.lock().unwrap() = Intake::default();
        *self.base.worker.lock().unwrap() = Some(Worker {
            decoder: None,
            slot: [None],
        });
        Ok(())
    }

    fn unload(&self) {
        *self.intake.lock().unwrap() = Intake::default();
    }

    /// Checks the latent caps, loads the decoder for their size and negotiates the output.
    fn set_sink_caps(&self, caps: &gst::CapsRef) -> Result<Deferred, String> {
        let (f, sf, fps) = parse_caps(caps)?;
        let s = self.settings.lock().unwrap().clone();
        let model = s.model.clone().unwrap_or_default();
        if let (Some(sf), Ok(ours)) = (sf, read_scaling_factor(&PathBuf::from(&model)))
            && (sf - ours as f64).abs() > 1e-6
        {
            gst::element_imp_warning!(
                self,
                gst::StreamError::Format,
                (
                    "The latents come from a model with VAE scaling factor {}, {} has {}: is it the same model?",
                    sf,
                    model,
                    ours
                )
            );
        }
        let size = (f.image_width, f.image_height);
        let mut intake = self.intake.lock().unwrap();
        // Checked before a decoder is loaded or run for this size.
        let oversize = s.max_pixels > 0 && f.pixels() > s.max_pixels;
        intake.oversize = oversize.then_some(s.max_pixels);
        if oversize {
            gst::warning!(
                CAT,
                imp = self,
                "latents of {}x{} are over max-pixels ({}): their frames are dropped",
                f.image_width,
                f.image_height,
                s.max_pixels
            );
        } else if intake.loaded != Some(size) {
            let opts = LoadOptions {
                model_dir: PathBuf::from(&model),
                width: f.image_width,
                height: f.image_height,
                batch_size: 1,
                execution_provider: s.runtime.execution_provider,
                device_id: s.runtime.device_id,
                fp16: s.runtime.fp16,
                engine_cache_dir: None,
                intra_threads: s.runtime.intra_threads(),
                cpu_arena: s.runtime.cpu_arena,
                ..LoadOptions::default()
            };
            let started = Instant::now();
            let d = VaeDecoder::load(&opts).map_err(|e| {
                format!(
                    "could not load the VAE decoder of {model} at {}x{}: {e}",
                    f.image_width, f.image_height
                )
            })?;
            gst::info!(
                CAT,
                imp = self,
                "decoder of {model} loaded in {:?}",
                started.elapsed()
            );
            intake.incoming = Some(d);
            intake.loaded = Some(size);
        }
        let (out, info) = self.negotiate_output(fps, size)?;
        intake.format = Some(f);
        drop(intake);
        let upstream_live = self.query_upstream_live();
        self.set_input(None, fps, upstream_live);
        Ok(Deferred::Caps(gst::event::Caps::new(&out), info))
    }

    fn read_frame(
        &self,
        buffer: &gst::BufferRef,
        _input: &InputState,
        _tag: u64,
        _running_time: Option<gst::ClockTime>,
    ) -> Result<Option<Vec<f32>>, gst::FlowError> {
        let mut intake = self.intake.lock().unwrap();
        let Some(f) = intake.format else {
            gst::element_imp_error!(
                self,
                gst::CoreError::Negotiation,
                ["Received a latent frame before any caps"]
            );
            return Err(gst::FlowError::NotNegotiated);
        };
        let Ok(map) = buffer.map_readable() else {
            self.bad_frame(&mut intake, "the buffer cannot be read".into());
            return Ok(None);
        };
        if let Some(max) = intake.oversize {
            let what = format!(
                "it decodes to a {}x{} picture ({} pixels), over max-pixels ({max}): raise max-pixels if pictures this large are meant (the decoder's memory grows with the picture)",
                f.image_width,
                f.image_height,
                f.pixels()
            );
            drop(map);
            self.drop_frame(&mut intake, what, |s| {
                s.extra.dropped_oversize += 1;
                ("dropped-oversize", s.extra.dropped_oversize)
            });
            return Ok(None);
        }
        if map.len() != f.bytes() {
            let what = format!(
                "{} bytes (pts {:?}) where the caps say float32 [1, {}, {}, {}] = {} bytes (truncated or another model's latents)",
                map.len(),
                buffer.pts(),
                f.channels,
                f.height,
                f.width,
                f.bytes()
            );
            drop(map);
            self.bad_frame(&mut intake, what);
            return Ok(None);
        }
        Ok(Some(
            map.chunks_exact(4)
                .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ))
    }

    fn output_caps(&self, fps: Option<gst::Fraction>, size: Option<(u32, u32)>) -> gst::Caps {
        let size = size.or_else(|| {
            let f = self.intake.lock().unwrap().format?;
            Some((f.image_width, f.image_height))
        });
        let b = gst::Caps::builder("video/x-raw").field("format", gst::List::new(SRC_FORMATS));
        let b = match size {
            Some((w, h)) => b.field("width", w as i32).field("height", h as i32),
            None => b
                .field("width", gst::IntRange::new(1, i32::MAX))
                .field("height", gst::IntRange::new(1, i32::MAX)),
        };
        let b = b.field("pixel-aspect-ratio", gst::Fraction::new(1, 1));
        match fps {
            Some(fps) => b.field("framerate", fps).build(),
            None => b.build(),
        }
    }

    fn negotiate_output(
        &self,
        fps: gst::Fraction,
        size: (u32, u32),
    ) -> Result<(gst::Caps, gst_video::VideoInfo), String> {
        let out = self.downstream_caps(fps, size, "")?;
        let info = gst_video::VideoInfo::from_caps(&out).map_err(|e| e.to_string())?;
        Ok((out, info))
    }

    fn holds_frames(_w: &Worker) -> bool {
        false
    }

    fn task_frame(&self, w: &mut Worker, f: Queued<Vec<f32>>) -> Result<(), gst::FlowError> {
        let Worker { decoder, slot } = w;
        let Some(decoder) = decoder.as_mut() else {
            return Err(gst::FlowError::NotNegotiated);
        };
        self.timed(|| decoder.decode(&f.data, 1, slot))
            .map_err(|e| self.engine_failed(e))?;
        let Some(t) = slot[0].clone() else {
            return Err(gst::FlowError::Error);
        };
        self.send_out(OutItem::Frame(t, f.meta))
    }

    /// New caps take the decoder loaded for them; the frames before them were decoded.
    fn task_event(&self, w: &mut Worker, d: Deferred) -> Result<(), gst::FlowError> {
        if matches!(d, Deferred::Caps(..))
            && let Some(decoder) = self.intake.lock().unwrap().incoming.take()
        {
            w.decoder = Some(decoder);
            w.slot = [None];
        }
        self.send_out(OutItem::Event(d))
    }

    fn task_drain(&self, _w: &mut Worker) -> Result<(), gst::FlowError> {
        Ok(())
    }

    fn flush_worker(&self, _w: &mut Worker) -> (usize, Vec<Deferred>) {
        (0, Vec::new())
    }

    fn render(
        &self,
        pic: &Arc<Tensor<f32>>,
        conv: &OutputConverter,
    ) -> Result<Rendered, gst::FlowError> {
        let info = conv.out_info();
        let mut rgb = Vec::new();
        decoded_to_rgb8(
            pic.extract_tensor().1,
            info.width(),
            info.height(),
            &mut rgb,
        );
        Ok(Rendered::Rgb(rgb))
    }
}

impl I2iDecode {
    /// A frame that does not fit its caps: a rate-limited warning, counted, dropped.
    fn bad_frame(&self, intake: &mut Intake, what: String) {
        self.drop_frame(intake, what, |s| {
            s.frames_invalid += 1;
            ("dropped-invalid", s.frames_invalid)
        });
    }

    /// Drops a frame for `what`: `count` adds it to its counter and names it; a
    /// rate-limited warning.
    fn drop_frame(
        &self,
        intake: &mut Intake,
        what: String,
        count: impl FnOnce(&mut Stats<DecodeStats>) -> (&'static str, u64),
    ) {
        let (counter, n) = count(&mut self.base.stats.lock().unwrap());
        if let Some(text) = intake
            .warnings
            .get_or_insert_with(|| RateLimit::new(WARN_INTERVAL))
            .message(format!(
                "Dropping a latent frame: {what} ({n} dropped so far, see stats {counter})"
            ))
        {
            gst::element_imp_warning!(self, gst::StreamError::Decode, ("{text}"));
        }
    }
}

impl ObjectImpl for I2iDecode {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("model")
                    .nick("Model directory")
                    .blurb("The model directory the latents come from (its vae_decoder/model.onnx and config.json are used)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("max-pixels")
                    .nick("Maximum picture size")
                    .blurb("Largest picture (image-width x image-height of the latent caps) decoded; latents that decode to a larger one are dropped before the decoder runs and counted as dropped-oversize (the decoder's memory grows with the picture). 0 = no limit")
                    .default_value(DEFAULT_MAX_PIXELS)
                    .mutable_ready()
                    .build(),
            ]
            .into_iter()
            .chain(RuntimeSettings::param_specs(false))
            // No `provider`: the decoder loads at the first caps and does not report it.
            .chain(
                default_stream()
                    .param_specs_from(I2iDecode::STATS_NAME, false)
                    .into_iter()
                    .filter(|p| p.name() != "provider"),
            )
            .chain([stats_param_spec(
                "avg-decode-ms; dropped-invalid counts payloads not matching the caps, dropped-oversize frames over max-pixels",
            )])
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
        match name {
            "model" => s.model = value.get().unwrap(),
            "max-pixels" => s.max_pixels = value.get().unwrap(),
            _ => unreachable!("property {name} is not registered"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let name = pspec.name();
        if let Some(v) = self.base_property(name) {
            return v;
        }
        let s = self.settings.lock().unwrap();
        if let Some(v) = s.runtime.property(name) {
            return v;
        }
        if let Some(v) = s.stream.property(name) {
            return v;
        }
        match name {
            "model" => s.model.to_value(),
            "max-pixels" => s.max_pixels.to_value(),
            name => unreachable!("property {name} is not registered"),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        self.add_pads(&[]);
    }
}

impl GstObjectImpl for I2iDecode {}

impl ElementImpl for I2iDecode {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Diffusion latent decoder",
                "Codec/Decoder/Video",
                "Runs a diffusion model's VAE decoder (KL or TAESD) on latent frames from i2itransform output=latent",
                "i2i developers",
            )
        });
        Some(&*META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let src = gst::Caps::builder("video/x-raw")
                .field("format", gst::List::new(SRC_FORMATS))
                .field("width", gst::IntRange::new(1, i32::MAX))
                .field("height", gst::IntRange::new(1, i32::MAX))
                .build();
            vec![
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &gst::Caps::new_empty_simple(LATENT_CAPS_NAME),
                )
                .unwrap(),
                gst::PadTemplate::new(
                    "src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &src,
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
