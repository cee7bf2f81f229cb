// SPDX-License-Identifier: MPL-2.0
//! The `i2itransform` element on the shared inference base ([`crate::infer::element`]).
//!
//! This file holds its properties (checked together at start), the settings pad, how it
//! binds the engine to the stream (model size, preprocessing, output caps) and its start
//! and stop; the inference task's work with the engine is in `task.rs`, the output
//! thread's rendering in `output.rs`, ControlNet and latent feedback in `control.rs`. The
//! threads, queues, events, queries, live drop policy and stats are the base's.
//!
//! Threads: the upstream streaming thread converts each frame to RGB8 at the model size,
//! runs the engine's preprocessing and queues it (blocking while `max-queue` frames wait);
//! the src pad's task takes frames off the queue, collects batches of `batch-size` and runs
//! the engine; an output thread turns the engine's pictures into buffers of the output
//! format and pushes them, so that this work overlaps the next model call. Serialized
//! events travel through the same queues and leave after the output of the last frame that
//! came before them, so the stream keeps its order although the engine holds frames back
//! (the stream batch).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, LazyLock, Mutex};
use std::time::Instant;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::control::{self, ControlSettings};
use super::ipadapter_pad;
use super::live::{self, LiveSettings};
use super::worker::{FirstSettings, Worker};
use super::{OutputMode, latent_caps};
use crate::diffusion::lora::AdapterCache;
use crate::diffusion::{
    self, DecodedFrame, Engine, LoadOptions, PreparedFrame, Preprocessor, StreamParams,
};
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
use i2i_core::rate_limit::RateLimit;
use i2i_core::settings::blend::BlendMode;
use i2i_core::settings::{self, CfgType, SETTINGS_CAPS_NAME, SettingsUpdate};
use i2i_core::tensor::LATENT_CAPS_NAME;

pub(super) static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "i2itransform",
        gst::DebugColorFlags::empty(),
        Some("Diffusion image-to-image transform"),
    )
});

const DEFAULT_WIDTH: u32 = 512;
const DEFAULT_HEIGHT: u32 = 512;
const DEFAULT_BATCH_SIZE: u32 = 1;
const DEFAULT_TRANSITION_FRAMES: u32 = 0;
const DEFAULT_SIZE_MULTIPLE: u32 = 8;
const DEFAULT_WAIT_FOR_SETTINGS: bool = true;
const DEFAULT_SETTINGS_TIMEOUT_MS: u32 = 3000;
const MAX_SIZE: u32 = 4096;
const MAX_BATCH_SIZE: u32 = 64;

/// Values of the properties that depend on each other, as set before the element starts:
/// checked together at start, so the order they are set in does not matter.
#[derive(Debug, Clone, Default)]
pub(super) struct Unchecked {
    t_index_list: Option<String>,
    num_inference_steps: Option<u32>,
    width: Option<u32>,
    height: Option<u32>,
    prompt_blend: Option<String>,
    seed_blend: Option<String>,
}

impl Unchecked {
    fn is_empty(&self) -> bool {
        self.t_index_list.is_none()
            && self.num_inference_steps.is_none()
            && self.width.is_none()
            && self.height.is_none()
            && self.prompt_blend.is_none()
            && self.seed_blend.is_none()
    }
}

/// `width` / `height`: a multiple of 8 in 8..=MAX_SIZE.
fn check_size(name: &str, v: u32) -> Result<u32, String> {
    if v.is_multiple_of(8) && (8..=MAX_SIZE).contains(&v) {
        return Ok(v);
    }
    let down = (v / 8 * 8).max(8);
    Err(format!(
        "{name} {v} refused: the model needs a multiple of 8 from 8 to {MAX_SIZE} (latents are 1/8 of the picture), e.g. {down} or {}",
        down + 8
    ))
}

#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub model: Option<String>,
    pub live: LiveSettings,
    pub width: u32,
    pub height: u32,
    pub batch_size: u32,
    pub runtime: RuntimeSettings,
    pub stream: StreamSettings,
    /// Pictures, or the final latents (`output=latent`).
    pub output: OutputMode,
    /// The loaded model's VAE scaling factor, for the latent caps.
    pub scaling_factor: f32,
    pub size_from_input: bool,
    pub size_multiple: u32,
    pub wait_for_settings: bool,
    pub settings_timeout_ms: u32,
    /// `settings-folder`: the only folder whose files the settings pad may name.
    pub settings_folder: Option<std::path::PathBuf>,
    /// Set before start and not checked yet.
    pub unchecked: Unchecked,
    /// Latent feedback and ControlNet (`control.rs`).
    pub control: ControlSettings,
}

impl Settings {
    /// The model size: the values set before start when they are usable (so that caps
    /// queries while linking see them), else the current ones.
    /// `size-from-input`: the input's size rounded down to `size-multiple`, within range.
    pub fn size_for_input(&self, in_w: u32, in_h: u32) -> (u32, u32) {
        let m = self.size_multiple.max(8);
        let round = |v: u32| (v / m * m).clamp(m, MAX_SIZE / m * m);
        (round(in_w), round(in_h))
    }

    pub fn size(&self) -> (u32, u32) {
        let pick = |set: Option<u32>, name, current| {
            set.and_then(|v| check_size(name, v).ok())
                .unwrap_or(current)
        };
        (
            pick(self.unchecked.width, "width", self.width),
            pick(self.unchecked.height, "height", self.height),
        )
    }

    /// Checks the properties set before start together (steps before the indices that
    /// must be below them) and applies them; the error names the property, the value and
    /// what is accepted.
    fn apply_unchecked(&mut self) -> Result<(), String> {
        let u = std::mem::take(&mut self.unchecked);
        let steps = u
            .num_inference_steps
            .unwrap_or(self.live.params.num_inference_steps);
        let list = match &u.t_index_list {
            // The parser's error names the value and the accepted indices.
            Some(text) => live::parse_t_index_list(text, steps)?,
            None => {
                let list = self.live.params.t_index_list.clone();
                if let Some(&max) = list.iter().max().filter(|&&m| m >= steps) {
                    return Err(format!(
                        "num-inference-steps {steps} refused: t-index-list \"{}\" uses index {max}; set num-inference-steps above {max} (up to {}) or a t-index-list below {steps}",
                        live::format_t_index_list(&list),
                        settings::NUM_INFERENCE_STEPS_RANGE.1
                    ));
                }
                list
            }
        };
        let width = u.width.map(|v| check_size("width", v)).transpose()?;
        let height = u.height.map(|v| check_size("height", v)).transpose()?;
        let mut live = self.live.clone();
        for (name, text) in [
            ("prompt-blend", &u.prompt_blend),
            ("seed-blend", &u.seed_blend),
        ] {
            if let Some(text) = text {
                live::blend_property_update(name, text)
                    .and_then(|update| live.apply_update(&update))?;
            }
        }
        live.params.num_inference_steps = steps;
        live.params.t_index_list = list;
        self.live = live;
        if let Some(w) = width {
            self.width = w;
        }
        if let Some(h) = height {
            self.height = h;
        }
        Ok(())
    }
}

impl Default for Settings {
    fn default() -> Self {
        let live = LiveSettings {
            params: StreamParams {
                transition_frames: DEFAULT_TRANSITION_FRAMES,
                ..Default::default()
            },
        };
        Settings {
            model: None,
            live,
            width: DEFAULT_WIDTH,
            height: DEFAULT_HEIGHT,
            batch_size: DEFAULT_BATCH_SIZE,
            runtime: RuntimeSettings::default(),
            stream: StreamSettings::default(),
            output: OutputMode::default(),
            scaling_factor: 1.0,
            size_from_input: false,
            size_multiple: DEFAULT_SIZE_MULTIPLE,
            wait_for_settings: DEFAULT_WAIT_FOR_SETTINGS,
            settings_timeout_ms: DEFAULT_SETTINGS_TIMEOUT_MS,
            settings_folder: None,
            unchecked: Unchecked::default(),
            control: ControlSettings::default(),
        }
    }
}

/// Streaming-thread side: the engine's preprocessing for the current caps.
#[derive(Default)]
struct ModelInput {
    /// The engine's preprocessing, run here on the streaming thread so the inference task
    /// only runs model calls.
    preprocessor: Option<Preprocessor>,
    /// The model size for the current input caps.
    model_size: Option<(u32, u32)>,
}

/// What only `i2itransform` counts in its stats.
#[derive(Default)]
pub struct I2iStats {
    pub frames_skipped: u64,
    pub settings_applied: u64,
    pub settings_rejected: u64,
}

/// Bus warnings for refused settings at most this many per second.
const SETTINGS_REFUSALS_PER_SECOND: u32 = 5;

pub struct I2iTransform {
    pub(super) settingspad: gst::Pad,
    pub(super) settings: Mutex<Settings>,
    /// Queues, threads, input conversion and stats shared with the other inference elements.
    pub(super) base: InferBase<Self>,
    model_input: Mutex<ModelInput>,
    /// `output=latent`: the engine's frames are latents, pushed as they are.
    pub(super) latent: AtomicBool,
    /// What came first on the settings pad since start (`wait-for-settings`).
    pub(super) settings_received: Mutex<FirstSettings>,
    pub(super) settings_cond: Condvar,
    /// Control images: preprocessors, control pads, the previous output (`control.rs`).
    pub(super) control: control::ControlState,
    /// IP-Adapter: its properties, pad and encoder thread (`ipadapter_pad.rs`).
    pub(super) ip: ipadapter_pad::IpState,
    /// LoRA files read where `lora` is set, bound from memory by the inference thread.
    pub(super) lora_files: AdapterCache,
    /// The bus warnings of refused settings (they may come from the network): a few per
    /// second, the rest counted in `settings-rejected` and in the next warning.
    settings_refusals: Mutex<RateLimit>,
}

#[glib::object_subclass]
impl ObjectSubclass for I2iTransform {
    const NAME: &'static str = "GstI2iTransform";
    type Type = super::I2iTransform;
    type ParentType = gst::Element;

    fn with_class(klass: &Self::Class) -> Self {
        let sinkpad =
            sink_pad_builder::<I2iTransform>(&klass.pad_template("sink").unwrap()).build();

        let settingspad = gst::Pad::builder_from_template(&klass.pad_template("settings").unwrap())
            .chain_function(|_pad, parent, buffer| {
                I2iTransform::catch_panic_pad_function(
                    parent,
                    || Err(gst::FlowError::Error),
                    |imp| imp.settings_chain(buffer),
                )
            })
            // The settings stream's events (EOS included) stay here: they must not
            // end or flush the video stream.
            .event_function(|_pad, _parent, event| {
                gst::log!(CAT, "settings pad: dropping event {:?}", event.type_());
                true
            })
            .iterate_internal_links_function(|_pad, _parent| gst::Iterator::from_vec(vec![]))
            .build();

        let srcpad = src_pad_builder::<I2iTransform>(&klass.pad_template("src").unwrap()).build();

        I2iTransform {
            settingspad,
            settings: Mutex::new(Settings::default()),
            control: control::ControlState::default(),
            ip: ipadapter_pad::IpState::default(),
            base: InferBase::new(sinkpad, srcpad),
            model_input: Mutex::new(ModelInput::default()),
            latent: AtomicBool::new(false),
            settings_received: Mutex::new(FirstSettings::Waiting),
            settings_cond: Condvar::new(),
            lora_files: AdapterCache::default(),
            settings_refusals: Mutex::new(RateLimit::per_second(SETTINGS_REFUSALS_PER_SECOND)),
        }
    }
}

impl InferElement for I2iTransform {
    type Data = PreparedFrame;
    type Picture = DecodedFrame;
    type Worker = Worker;
    type StatsExtra = I2iStats;

    const OUTPUT_THREAD: &'static str = "i2i-output";
    const STATS_NAME: &'static str = "i2itransform-stats";

    fn cat() -> gst::DebugCategory {
        *CAT
    }

    fn base(&self) -> &InferBase<Self> {
        &self.base
    }

    fn stream_settings(&self) -> StreamSettings {
        self.settings.lock().unwrap().stream
    }

    /// Before the engine loads: the stream batch of the t-index-list set.
    fn latency_settings(&self) -> LatencySettings {
        let s = self.settings.lock().unwrap();
        let n = s.live.params.t_index_list.len().max(1);
        let b = s.batch_size as usize;
        LatencySettings {
            latency_frames: (n - 1) * b,
            batch_size: b,
        }
    }

    fn stats_fields(
        &self,
        b: gst::structure::Builder,
        s: &Stats<I2iStats>,
    ) -> gst::structure::Builder {
        b.field("frames-skipped", s.extra.frames_skipped)
            .field("settings-applied", s.extra.settings_applied)
            .field("settings-rejected", s.extra.settings_rejected)
            .field("control-fallbacks", self.control.fallbacks())
            .field("ip-adapter-pictures", self.ip.counts().0)
            .field("ip-adapter-refused", self.ip.counts().1)
    }

    fn set_sink_caps(&self, caps: &gst::CapsRef) -> Result<Deferred, String> {
        let in_info = gst_video::VideoInfo::from_caps(caps)
            .map_err(|e| format!("input caps {caps} are not raw video: {e}"))?;
        let (w, h, mode) = {
            let s = self.settings.lock().unwrap();
            let (w, h) = if s.size_from_input {
                s.size_for_input(in_info.width(), in_info.height())
            } else {
                (s.width, s.height)
            };
            (w, h, s.stream.resize_mode)
        };
        let conv = InputConverter::new(&in_info, w, h, mode, converter_threads())?;
        self.model_input.lock().unwrap().model_size = Some(conv.model_size());
        let upstream_live = self.query_upstream_live();
        let (out_caps, out_info) = self.negotiate_output(in_info.fps(), conv.model_size())?;
        gst::info!(
            CAT,
            imp = self,
            "input {caps} -> model RGB {w}x{h} -> output {out_caps}"
        );
        self.set_input(Some(conv), in_info.fps(), upstream_live);
        gst::debug!(CAT, imp = self, "upstream live: {upstream_live}");
        Ok(Deferred::Caps(gst::event::Caps::new(&out_caps), out_info))
    }

    fn read_frame(
        &self,
        buffer: &gst::BufferRef,
        input: &InputState,
        tag: u64,
        running_time: Option<gst::ClockTime>,
    ) -> Result<Option<PreparedFrame>, gst::FlowError> {
        let Some(RgbFrame {
            rgb,
            width: model_w,
            height: model_h,
        }) = self.convert_video(buffer, input)?
        else {
            return Ok(None);
        };
        let mut prepared = {
            let m = self.model_input.lock().unwrap();
            let Some(pre) = m.preprocessor.as_ref() else {
                return Err(gst::FlowError::Flushing);
            };
            pre.prepare(tag, &rgb, model_w, model_h).map_err(|e| {
                gst::element_imp_error!(self, gst::CoreError::Negotiation, ["{}", e]);
                gst::FlowError::NotNegotiated
            })?
        };
        self.prepare_control(&mut prepared, &rgb, (model_w, model_h), running_time);
        Ok(Some(prepared))
    }

    /// Every output the element can produce at the configured size, in our preference order.
    /// `size`: the model size these caps are for; None: the current input's.
    fn output_caps(&self, fps: Option<gst::Fraction>, size: Option<(u32, u32)>) -> gst::Caps {
        let model_size = size.or(self.model_input.lock().unwrap().model_size);
        let (size, from_input) = {
            let s = self.settings.lock().unwrap();
            if s.output == OutputMode::Latent {
                let (w, h) = model_size.unwrap_or(s.size());
                return latent_caps(w, h, s.scaling_factor, fps);
            }
            (s.size(), s.size_from_input)
        };
        let builder = gst::Caps::builder("video/x-raw")
            .field("format", gst::List::new(SRC_FORMATS))
            .field("pixel-aspect-ratio", gst::Fraction::new(1, 1));
        let builder = match (model_size, from_input) {
            (Some((w, h)), _) => builder.field("width", w as i32).field("height", h as i32),
            // Not known before the input caps.
            (None, true) => builder
                .field("width", gst::IntRange::new(8, MAX_SIZE as i32))
                .field("height", gst::IntRange::new(8, MAX_SIZE as i32)),
            (None, false) => builder
                .field("width", size.0 as i32)
                .field("height", size.1 as i32),
        };
        with_framerate(builder, fps)
    }

    /// Output caps by downstream's preference (ours, RGB first, when it has none).
    fn negotiate_output(
        &self,
        fps: gst::Fraction,
        size: (u32, u32),
    ) -> Result<(gst::Caps, gst_video::VideoInfo), String> {
        let caps = self.downstream_caps(
            fps,
            size,
            ". Set width/height to a size it takes, or add videoconvert/videoscale after i2itransform",
        )?;
        // Latent output: the frames' size and rate travel in an RGB description.
        let info = if self.settings.lock().unwrap().output == OutputMode::Latent {
            gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, size.0, size.1)
                .fps(fps)
                .build()
                .map_err(|e| e.to_string())?
        } else {
            gst_video::VideoInfo::from_caps(&caps)
                .map_err(|e| format!("cannot use output caps {caps}: {e}"))?
        };
        gst::debug!(CAT, imp = self, "output caps {caps}");
        Ok((caps, info))
    }

    fn holds_frames(w: &Worker) -> bool {
        !w.batch.is_empty() || w.engine.in_flight() > 0
    }

    fn task_frame(&self, w: &mut Worker, f: Queued<PreparedFrame>) -> Result<(), gst::FlowError> {
        self.batch_frame(w, f)
    }

    fn task_event(&self, w: &mut Worker, d: Deferred) -> Result<(), gst::FlowError> {
        self.stream_event(w, d)
    }

    fn task_drain(&self, w: &mut Worker) -> Result<(), gst::FlowError> {
        self.drain_engine(w)
    }

    /// The engine forgets the frames in flight.
    fn flush_worker(&self, w: &mut Worker) -> (usize, Vec<Deferred>) {
        let dropped = w.batch.len() + w.in_flight.len();
        w.batch.clear();
        w.in_flight.clear();
        w.engine.reset();
        self.flush_control();
        (dropped, w.deferred.drain(..).map(|(_, d)| d).collect())
    }

    /// Caps with another model size (size-from-input) that had not reached the task: the
    /// engine (empty after the flush) is loaded at that size.
    fn flushed_caps(&self, info: &gst_video::VideoInfo) -> bool {
        let mut guard = self.base.worker.lock().unwrap();
        match guard.as_mut() {
            Some(w) if (info.width(), info.height()) != (w.load.width, w.load.height) => {
                self.reload_at(w, info.width(), info.height()).is_ok()
            }
            _ => true,
        }
    }

    fn render(
        &self,
        out: &DecodedFrame,
        conv: &OutputConverter,
    ) -> Result<Rendered, gst::FlowError> {
        Ok(self.render_frame(out, conv))
    }

    fn count_pushed(out: &DecodedFrame, extra: &mut I2iStats) {
        if out.skipped {
            extra.frames_skipped += 1;
        }
    }

    fn load(&self) -> Result<(), gst::StateChangeError> {
        let s = {
            let mut s = self.settings.lock().unwrap();
            if !s.unchecked.is_empty()
                && let Err(e) = s.apply_unchecked()
            {
                drop(s);
                gst::element_imp_error!(
                    self,
                    gst::LibraryError::Settings,
                    ("Invalid property value: {}", e),
                    ["Properties set before start are checked together when the element starts"]
                );
                return Err(gst::StateChangeError);
            }
            s.clone()
        };
        let Some(model) = s.model.clone().filter(|m| !m.is_empty()) else {
            gst::element_imp_error!(
                self,
                gst::ResourceError::NotFound,
                ("No model set"),
                ["Set the model property to a directory in the diffusers / optimum ONNX layout"]
            );
            return Err(gst::StateChangeError);
        };
        let intra_threads = s.runtime.intra_threads();
        let trt_profile = s.runtime.trt_profile.parse().map_err(|e| {
            gst::element_imp_error!(
                self,
                gst::LibraryError::Settings,
                ("Invalid property value: {}", e)
            );
            gst::StateChangeError
        })?;
        let opts = LoadOptions {
            model_dir: model.clone().into(),
            width: s.width,
            height: s.height,
            batch_size: s.batch_size as usize,
            execution_provider: s.runtime.execution_provider,
            device_id: s.runtime.device_id,
            fp16: s.runtime.fp16,
            engine_cache_dir: s.runtime.engine_cache_dir.clone().map(Into::into),
            intra_threads,
            trt_profile,
            cpu_arena: s.runtime.cpu_arena,
        };
        gst::info!(CAT, imp = self, "loading {opts:?}");
        let started = Instant::now();
        if s.size_from_input && !s.size_multiple.is_multiple_of(8) {
            gst::element_imp_error!(
                self,
                gst::LibraryError::Settings,
                (
                    "Invalid property value: size-multiple {} refused: the model needs a multiple of 8 (8, 64, ...)",
                    s.size_multiple
                )
            );
            return Err(gst::StateChangeError);
        }
        let mut engine =
            Engine::load_sharing(&opts, &s.live.params, &self.lora_files).map_err(|e| {
                gst::element_imp_error!(
                    self,
                    gst::LibraryError::Init,
                    ("Could not load the model in {}: {}", model, e),
                    ["{:?}", e]
                );
                gst::StateChangeError
            })?;
        self.start_control(&mut engine, &s.control, (opts.width, opts.height))?;
        self.start_ip(&mut engine)?;
        let provider = engine.provider().nick();
        let load_time = started.elapsed();
        gst::info!(
            CAT,
            imp = self,
            "model {model} loaded in {load_time:?}, running on {provider}"
        );
        // What runs, for gst-launch-1.0 -m and applications: the provider actually chosen
        // (auto may fall back to the CPU) among it.
        let started_msg = gst::Structure::builder("i2itransform-started")
            .field("provider", provider)
            .field("model", &model)
            .field("width", s.width)
            .field("height", s.height)
            .field("batch-size", s.batch_size)
            .field("threads", intra_threads as u32)
            .field("fp16", s.runtime.fp16)
            .field("num-inference-steps", s.live.params.num_inference_steps)
            .field(
                "t-index-list",
                live::format_t_index_list(&s.live.params.t_index_list),
            )
            .field("latency-frames", engine.latency_frames() as u32)
            .field("load-ms", load_time.as_secs_f64() * 1000.0)
            .field("lora-projections", engine.lora_projections() as u32)
            .build();
        self.post_started(started_msg);
        self.reset_for_start(Stats::started(
            provider,
            s.batch_size as usize,
            engine.latency_frames(),
        ));
        *self.settings_received.lock().unwrap() = FirstSettings::Waiting;
        let latent = s.output == OutputMode::Latent;
        let mut engine = engine;
        engine.set_latent_output(latent);
        self.latent.store(latent, Ordering::SeqCst);
        self.settings.lock().unwrap().scaling_factor = engine.scaling_factor();
        *self.model_input.lock().unwrap() = ModelInput {
            preprocessor: Some(engine.preprocessor()),
            model_size: None,
        };
        *self.base.worker.lock().unwrap() = Some(Worker::new(engine, opts, s.live));
        Ok(())
    }

    fn unload(&self) {
        self.stop_ip();
        *self.model_input.lock().unwrap() = ModelInput::default();
    }
}

impl I2iTransform {
    /// `lora`: the files are read and parsed here, on the setter's thread, before the list
    /// reaches the inference thread, which binds them from memory (a 100 MB LoRA would
    /// stall the show there); a file that does not fit is refused when bound.
    fn set_lora(&self, value: &glib::Value) {
        let text = value.get::<Option<String>>().unwrap().unwrap_or_default();
        gst::debug!(CAT, imp = self, "setting lora to {text:?}");
        match i2i_core::settings::lora::parse_lora_list(&text) {
            Ok(l) => {
                let list = i2i_core::settings::lora::format_lora_list(&l);
                self.lora_files.load_list(&list);
                self.settings.lock().unwrap().live.params.lora = list;
            }
            Err(e) => self.refuse(&format!("{e} (refused)")),
        }
    }

    // ---- settings pad -----------------------------------------------------------------

    fn settings_chain(&self, buffer: gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        let mut update = match buffer.map_readable() {
            Ok(map) => SettingsUpdate::from_json(map.as_slice()),
            Err(_) => Err("settings buffer cannot be read".to_string()),
        };
        let empty = update.as_ref().is_ok_and(SettingsUpdate::is_empty);
        // Files named here come from whoever reaches the settings holder: only those
        // under settings-folder are read, by their resolved paths.
        let folder = self.settings.lock().unwrap().settings_folder.clone();
        let mut file_refused = update
            .as_mut()
            .map(|u| live::confine_files(u, folder.as_deref()))
            .unwrap_or_default();
        file_refused.extend(
            update
                .as_ref()
                .map(|u| self.apply_ip_settings(u))
                .unwrap_or_default(),
        );
        // LoRA files are read here, on this streaming thread, so that the inference thread
        // finds them in memory.
        if let Ok(Some(l)) = update.as_ref().map(|u| u.lora.as_deref()) {
            self.lora_files.load_list(l);
        }
        let result = update.map(|u| {
            let mut s = self.settings.lock().unwrap();
            let (changed, mut refused) = s.live.apply_valid(&u);
            refused.extend(file_refused);
            (changed, refused)
        });
        // Applied first, so the first frame has them. Even an empty or refused update
        // means the holder is there: the stream need not wait.
        self.settings_arrived(empty);
        let refused = match result {
            Ok((changed, refused)) => {
                gst::debug!(CAT, imp = self, "settings pad changed {changed:?}");
                for name in changed {
                    if self.obj().find_property(name).is_some() {
                        self.obj().notify(name);
                    }
                }
                refused
            }
            Err(e) => vec![e],
        };
        if !refused.is_empty() {
            self.base.stats.lock().unwrap().extra.settings_rejected += 1;
            let text = format!("settings pad: refused {}", refused.join("; "));
            match self.settings_refusals.lock().unwrap().message(text.clone()) {
                Some(report) => self.refuse(&report),
                None => gst::debug!(CAT, imp = self, "{text} (warning held back)"),
            }
            // Upstream too: settingssrc tells the settings holder, whose consoles show it.
            let event = gst::event::CustomUpstream::new(
                gst::Structure::builder(i2i_core::settings::state::REFUSED_EVENT)
                    .field("refused", refused.join("\n"))
                    .build(),
            );
            let _ = self.settingspad.push_event(event);
        }
        Ok(gst::FlowSuccess::Ok)
    }
}

impl ObjectImpl for I2iTransform {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            let p = diffusion::StreamParams::default();
            vec![
                glib::ParamSpecString::builder("model")
                    .nick("Model directory")
                    .blurb("Directory of a diffusers / optimum ONNX export: text_encoder/, unet/, vae_encoder/, vae_decoder/, tokenizer/, scheduler/")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("prompt")
                    .nick("Prompt")
                    .blurb(
                        "What the picture should become; (word:1.5) weighs a word more, [word] \
                         less",
                    )
                    .default_value(Some(p.prompt.as_str()))
                    .mutable_playing()
                    .build(),
                glib::ParamSpecString::builder("negative-prompt")
                    .nick("Negative prompt")
                    .blurb(
                        "What to steer away from (cfg-type full or initialize); weights as in \
                         prompt",
                    )
                    .default_value(Some(p.negative_prompt.as_str()))
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt64::builder("seed")
                    .nick("Seed")
                    .blurb("Seed of the fixed noise (i2i-noise-v1: the same on every machine)")
                    .default_value(p.seed)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecString::builder("t-index-list")
                    .nick("Timestep indices")
                    .blurb("Comma-separated, increasing indices into the num-inference-steps LCM timesteps; one denoising step each. Lower first index = stronger change")
                    .default_value(Some(
                        live::format_t_index_list(&p.t_index_list).as_str(),
                    ))
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("num-inference-steps")
                    .nick("Inference steps")
                    .blurb("Length of the LCM timestep list that t-index-list indexes")
                    .minimum(settings::NUM_INFERENCE_STEPS_RANGE.0)
                    .maximum(settings::NUM_INFERENCE_STEPS_RANGE.1)
                    .default_value(p.num_inference_steps)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecDouble::builder("guidance-scale")
                    .nick("Guidance scale")
                    .blurb("Classifier-free guidance strength; 1 or less turns guidance off")
                    .minimum(settings::GUIDANCE_SCALE_RANGE.0)
                    .maximum(settings::GUIDANCE_SCALE_RANGE.1)
                    .default_value(p.guidance_scale as f64)
                    .mutable_playing()
                    .controllable()
                    .build(),
                glib::ParamSpecDouble::builder("delta")
                    .nick("Delta")
                    .blurb("Weight of the stock noise as the negative in residual CFG (self, initialize)")
                    .minimum(settings::DELTA_RANGE.0)
                    .maximum(settings::DELTA_RANGE.1)
                    .default_value(p.delta as f64)
                    .mutable_playing()
                    .controllable()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("cfg-type", p.cfg_type)
                    .nick("CFG type")
                    .blurb("How the negative side of guidance is formed")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("add-noise")
                    .nick("Add noise")
                    .blurb("Re-noise between denoising steps with the fixed noise")
                    .default_value(p.add_noise)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecDouble::builder("similarity-threshold")
                    .nick("Similarity threshold")
                    .blurb("Skip frames this similar to the last processed one (stochastic similarity filter); 0 turns it off, 0.98 is typical")
                    .minimum(settings::SIMILARITY_THRESHOLD_RANGE.0)
                    .maximum(settings::SIMILARITY_THRESHOLD_RANGE.1)
                    .default_value(p.similarity_threshold as f64)
                    .mutable_playing()
                    .controllable()
                    .build(),
                glib::ParamSpecUInt::builder("max-skip-frames")
                    .nick("Max skipped frames")
                    .blurb("The similarity filter processes a frame at least after this many skipped in a row")
                    .default_value(p.max_skip_frames)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("transition-frames")
                    .nick("Transition frames")
                    .blurb("Frames shown between the old and the new picture when the prompt, the seed or a blend changes: the text embeddings and the noise fade over them; 0 = jump")
                    .maximum(settings::MAX_TRANSITION_FRAMES)
                    .default_value(DEFAULT_TRANSITION_FRAMES)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecString::builder("prompt-blend")
                    .nick("Prompt blend")
                    .blurb("Weighted blend of prompts replacing prompt while set: \"a red fox\":0.7 \"oil painting\":0.3 (up to 8); empty or off ends it")
                    .default_value(Some(""))
                    .mutable_playing()
                    .build(),
                glib::ParamSpecString::builder("seed-blend")
                    .nick("Seed blend")
                    .blurb("Weighted blend of seeds' noise replacing seed while set: 1:0.5 2:0.5 (up to 8); empty or off ends it")
                    .default_value(Some(""))
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("blend-mode", BlendMode::Linear)
                    .nick("Blend mode")
                    .blurb("How prompt blends and prompt transitions combine the text embeddings, and how seed blends combine the noise (seed transitions always slerp)")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("batch-size")
                    .nick("Batch size")
                    .blurb("Frames per model call")
                    .minimum(1)
                    .maximum(MAX_BATCH_SIZE)
                    .default_value(DEFAULT_BATCH_SIZE)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("width")
                    .nick("Width")
                    .blurb("Width the model runs at and of the output (a multiple of 8)")
                    .minimum(8)
                    .maximum(MAX_SIZE)
                    .default_value(DEFAULT_WIDTH)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("height")
                    .nick("Height")
                    .blurb("Height the model runs at and of the output (a multiple of 8)")
                    .minimum(8)
                    .maximum(MAX_SIZE)
                    .default_value(DEFAULT_HEIGHT)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("output", OutputMode::Pixels)
                    .nick("Output")
                    .blurb("pixels: decoded pictures; latent: the final latents (application/x-i2i-latent, float32 [1, 4, height/8, width/8], the VAE decoder's input) for i2idecode on this or another machine")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("size-from-input")
                    .nick("Size from input")
                    .blurb("Run the model and output at the input's size rounded down to size-multiple, instead of width x height (the model is reloaded when the input size changes)")
                    .default_value(false)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("size-multiple")
                    .nick("Size multiple")
                    .blurb("With size-from-input: round the size down to a multiple of this (8: what latents need; 64 for models whose UNet needs it)")
                    .minimum(8)
                    .maximum(512)
                    .default_value(DEFAULT_SIZE_MULTIPLE)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("wait-for-settings")
                    .nick("Wait for settings")
                    .blurb("When the settings pad is linked, hold the first frame until the settings holder's first state arrives (at most settings-timeout), so that it already runs with the holder's prompt; a holder with no settings yet lets it run at once on the properties")
                    .default_value(DEFAULT_WAIT_FOR_SETTINGS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("settings-timeout")
                    .nick("Settings timeout")
                    .blurb("Milliseconds wait-for-settings waits before starting with the properties' values and a WARNING; 0 = do not wait")
                    .maximum(600_000)
                    .default_value(DEFAULT_SETTINGS_TIMEOUT_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder(live::SETTINGS_FOLDER)
                    .nick("Settings folder")
                    .blurb("The only folder whose files the settings pad may name (/style pictures, /lora files): a relative path there starts at this folder, and a path that leads out of it (.., a link) is refused; unset = every file named by the settings pad is refused. The ip-adapter-image and lora properties are not confined")
                    .mutable_playing()
                    .build(),
            ]
            .into_iter()
            .chain(RuntimeSettings::param_specs(true))
            .chain([RuntimeSettings::trt_profile_spec()])
            .chain(StreamSettings::param_specs(I2iTransform::STATS_NAME))
            .chain([stats_param_spec(
                "frames-skipped (similarity filter), settings-applied, settings-rejected, control-fallbacks, ip-adapter-pictures (IP-Adapter pictures encoded), ip-adapter-refused (pictures that could not be decoded)",
            )])
            .chain(control::param_specs())
            .chain([glib::ParamSpecString::builder("lora")
                .nick("LoRA")
                .blurb("LoRA styles for a UNet exported with LoRA inputs (docs/models.md): FILE[:SCALE][,FILE[:SCALE]...] of .onnx_adapter files, scale 1 when absent; empty or off = none. Switched while playing from the next batch, no reload (the files are read when set, not on the inference thread); transition-frames cross-fades")
                .default_value(Some(""))
                .mutable_playing()
                .build()])
            .chain(ipadapter_pad::param_specs())
            .collect()
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let name = pspec.name();
        if self.refused_while_running(pspec) {
            return;
        }
        if ipadapter_pad::PROPERTIES.contains(&name) {
            let running = self.base.running.load(Ordering::SeqCst);
            return self.set_ip_property(name, value, running);
        }
        if name == "lora" {
            return self.set_lora(value);
        }
        let mut s = self.settings.lock().unwrap();
        gst::debug!(CAT, imp = self, "setting {name} to {value:?}");
        if s.runtime.set_property(name, value) {
            return;
        }
        if s.stream.set_property(name, value) {
            let stream = s.stream;
            drop(s);
            self.stream_settings_changed(&stream);
            return;
        }
        if !self.base.running.load(Ordering::SeqCst) {
            // Before start: kept as set, checked together at start.
            let u = &mut s.unchecked;
            let text = || value.get::<Option<String>>().unwrap().unwrap_or_default();
            match name {
                "t-index-list" => return u.t_index_list = Some(text()),
                "num-inference-steps" => return u.num_inference_steps = Some(value.get().unwrap()),
                "width" => return u.width = Some(value.get().unwrap()),
                "height" => return u.height = Some(value.get().unwrap()),
                "prompt-blend" => return u.prompt_blend = Some(text()),
                "seed-blend" => return u.seed_blend = Some(text()),
                _ => (),
            }
        }
        match name {
            name if control::PROPERTIES.contains(&name) => {
                let stopped = !self.base.running.load(Ordering::SeqCst);
                if let Err(e) = s.control.set_property(name, value, stopped) {
                    drop(s);
                    self.refuse(&e);
                }
            }
            "model" => s.model = value.get().expect("type checked upstream"),
            "prompt" => {
                s.live.params.prompt = value.get::<Option<String>>().unwrap().unwrap_or_default()
            }
            "negative-prompt" => {
                s.live.params.negative_prompt =
                    value.get::<Option<String>>().unwrap().unwrap_or_default()
            }
            "seed" => s.live.params.seed = value.get().unwrap(),
            "t-index-list" => {
                let text = value.get::<Option<String>>().unwrap().unwrap_or_default();
                match live::parse_t_index_list(&text, s.live.params.num_inference_steps) {
                    Ok(list) => s.live.params.t_index_list = list,
                    Err(e) => {
                        drop(s);
                        self.refuse(&e);
                    }
                }
            }
            "num-inference-steps" => {
                let steps: u32 = value.get().unwrap();
                match s.live.params.t_index_list.iter().max() {
                    Some(&max) if max >= steps => {
                        let list = live::format_t_index_list(&s.live.params.t_index_list);
                        drop(s);
                        self.refuse(&format!(
                            "num-inference-steps {steps} refused: t-index-list \"{list}\" uses index {max}; lower t-index-list first"
                        ));
                    }
                    _ => s.live.params.num_inference_steps = steps,
                }
            }
            "guidance-scale" => s.live.params.guidance_scale = value.get::<f64>().unwrap() as f32,
            "delta" => s.live.params.delta = value.get::<f64>().unwrap() as f32,
            "cfg-type" => s.live.params.cfg_type = value.get::<CfgType>().unwrap(),
            "add-noise" => s.live.params.add_noise = value.get().unwrap(),
            "similarity-threshold" => {
                s.live.params.similarity_threshold = value.get::<f64>().unwrap() as f32
            }
            "max-skip-frames" => s.live.params.max_skip_frames = value.get().unwrap(),
            "transition-frames" => s.live.params.transition_frames = value.get().unwrap(),
            "prompt-blend" | "seed-blend" => {
                let text = value.get::<Option<String>>().unwrap().unwrap_or_default();
                let result =
                    live::blend_property_update(name, &text).and_then(|u| s.live.apply_update(&u));
                drop(s);
                match result {
                    Ok(changed) => {
                        for other in changed.into_iter().filter(|n| *n != name) {
                            self.obj().notify(other);
                        }
                    }
                    Err(e) => self.refuse(&e),
                }
            }
            "blend-mode" => s.live.params.blend_mode = value.get::<BlendMode>().unwrap(),
            "batch-size" => s.batch_size = value.get().unwrap(),
            "width" | "height" => {
                let v: u32 = value.get().unwrap();
                match check_size(name, v) {
                    Err(e) => {
                        drop(s);
                        self.refuse(&e);
                    }
                    Ok(v) if name == "width" => s.width = v,
                    Ok(v) => s.height = v,
                }
            }
            "output" => s.output = value.get().unwrap(),
            "size-from-input" => s.size_from_input = value.get().unwrap(),
            "size-multiple" => s.size_multiple = value.get().unwrap(),
            "wait-for-settings" => s.wait_for_settings = value.get().unwrap(),
            "settings-timeout" => s.settings_timeout_ms = value.get().unwrap(),
            "settings-folder" => {
                s.settings_folder = value
                    .get::<Option<String>>()
                    .unwrap()
                    .filter(|f| !f.is_empty())
                    .map(std::path::PathBuf::from)
            }
            _ => unreachable!("property {name} is not registered"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let name = pspec.name();
        if let Some(v) = self.base_property(name) {
            return v;
        }
        if ipadapter_pad::PROPERTIES.contains(&name) {
            return self.ip_property(name);
        }
        let s = self.settings.lock().unwrap();
        if let Some(v) = s.runtime.property(name).or_else(|| s.stream.property(name)) {
            return v;
        }
        let p = &s.live.params;
        let u = &s.unchecked;
        match name {
            "t-index-list" if u.t_index_list.is_some() => u.t_index_list.to_value(),
            "num-inference-steps" if u.num_inference_steps.is_some() => {
                u.num_inference_steps.unwrap().to_value()
            }
            "width" if u.width.is_some() => u.width.unwrap().to_value(),
            "height" if u.height.is_some() => u.height.unwrap().to_value(),
            "prompt-blend" if u.prompt_blend.is_some() => u.prompt_blend.to_value(),
            "seed-blend" if u.seed_blend.is_some() => u.seed_blend.to_value(),
            name if control::PROPERTIES.contains(&name) => s.control.property(name),
            "model" => s.model.to_value(),
            "prompt" => p.prompt.to_value(),
            "negative-prompt" => p.negative_prompt.to_value(),
            "seed" => p.seed.to_value(),
            "t-index-list" => live::format_t_index_list(&p.t_index_list).to_value(),
            "num-inference-steps" => p.num_inference_steps.to_value(),
            "guidance-scale" => (p.guidance_scale as f64).to_value(),
            "delta" => (p.delta as f64).to_value(),
            "cfg-type" => p.cfg_type.to_value(),
            "add-noise" => p.add_noise.to_value(),
            "similarity-threshold" => (p.similarity_threshold as f64).to_value(),
            "max-skip-frames" => p.max_skip_frames.to_value(),
            "transition-frames" => s.live.params.transition_frames.to_value(),
            "prompt-blend" => live::format_prompt_blend(&s.live.params.prompt_blend).to_value(),
            "seed-blend" => live::format_seed_blend(&s.live.params.seed_blend).to_value(),
            "blend-mode" => s.live.params.blend_mode.to_value(),
            "lora" => s.live.params.lora.to_value(),
            "batch-size" => s.batch_size.to_value(),
            "width" => s.width.to_value(),
            "height" => s.height.to_value(),
            "output" => s.output.to_value(),
            "size-from-input" => s.size_from_input.to_value(),
            "size-multiple" => s.size_multiple.to_value(),
            "wait-for-settings" => s.wait_for_settings.to_value(),
            "settings-timeout" => s.settings_timeout_ms.to_value(),
            "settings-folder" => s
                .settings_folder
                .as_ref()
                .map(|f| f.display().to_string())
                .to_value(),
            name => unreachable!("property {name} is not registered"),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        self.add_pads(&[&self.settingspad]);
    }
}

impl GstObjectImpl for I2iTransform {}

impl ElementImpl for I2iTransform {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Diffusion image-to-image",
                "Filter/Effect/Video",
                "StreamDiffusion-style img2img on ONNX Runtime, batched, with live prompt and settings changes",
                "i2i developers",
            )
        });
        Some(&*META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let sink_caps = video_template_caps(&SINK_FORMATS);
            let mut src_caps = video_template_caps(&SRC_FORMATS);
            src_caps.merge(gst::Caps::new_empty_simple(LATENT_CAPS_NAME));
            vec![
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &sink_caps,
                )
                .unwrap(),
                gst::PadTemplate::new(
                    "settings",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &gst::Caps::new_empty_simple(SETTINGS_CAPS_NAME),
                )
                .unwrap(),
                gst::PadTemplate::new(
                    "src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &src_caps,
                )
                .unwrap(),
                I2iTransform::control_pad_template(&sink_caps),
                I2iTransform::ip_pad_template(&sink_caps),
            ]
        });
        TEMPLATES.as_ref()
    }

    fn request_new_pad(
        &self,
        templ: &gst::PadTemplate,
        name: Option<&str>,
        _caps: Option<&gst::Caps>,
    ) -> Option<gst::Pad> {
        if templ.name_template() == ipadapter_pad::PAD_NAME {
            return self.request_ip_pad(templ);
        }
        self.request_control_pad(templ, name)
    }

    fn release_pad(&self, pad: &gst::Pad) {
        if self.release_ip_pad(pad) {
            return;
        }
        self.release_control_pad(pad);
    }

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        self.change_state_loading(transition)
    }
}
