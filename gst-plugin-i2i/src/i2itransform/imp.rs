// SPDX-License-Identifier: MPL-2.0
//! The `i2itransform` element.
//!
//! This file holds the pads, events, queries, state and properties; the inference task is
//! in `task.rs`, the output thread in `output.rs`, the queue between threads in `queue.rs`.
//!
//! Threads: the upstream streaming thread runs the sink chain, which converts each frame
//! to RGB8 at the model size and queues it (blocking while `max-queue` frames wait); the
//! src pad's task takes frames off the queue, collects batches of `batch-size` and runs the
//! engine; an output thread turns the engine's pictures into buffers of the output format
//! and pushes them, so that this work overlaps the next model call. Serialized events
//! travel through the same queues and leave after the output of the last frame that came
//! before them, so the stream keeps its order although the engine holds frames back (the
//! stream batch).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, LazyLock, Mutex, mpsc};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::control::{self, ControlSettings};
use super::live::{self, LiveSettings};
use super::output::{OutItem, OutState};
use super::task::{Deferred, Item, QueuedFrame, Worker};
use super::{
    BlendMode, CfgType, DropFrames, ExecutionProvider, LATENT_CAPS_NAME, OutputMode, ResizeMode,
    latent_caps, provider_name,
};
use crate::diffusion::{self, Engine, LoadOptions, Preprocessor};
use crate::infer::convert::{
    InputConverter, OutputConverter, SINK_FORMATS, SRC_FORMATS, converter_threads,
};
use crate::infer::latency::added_latency;
use crate::infer::queue::BoundedQueue;
use crate::settings::{self, SETTINGS_CAPS_NAME, SettingsUpdate};

pub(super) static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "i2itransform",
        gst::DebugColorFlags::empty(),
        Some("Diffusion image-to-image transform"),
    )
});

const DEFAULT_T_INDEX_LIST: &str = "32,45";
const DEFAULT_WIDTH: u32 = 512;
const DEFAULT_HEIGHT: u32 = 512;
const DEFAULT_BATCH_SIZE: u32 = 1;
const DEFAULT_MAX_QUEUE: u32 = 4;
const DEFAULT_THREADS: u32 = 0;
const DEFAULT_DEVICE_ID: i32 = 0;
const DEFAULT_FP16: bool = true;
const DEFAULT_TRANSITION_FRAMES: u32 = 0;
const DEFAULT_STATS_INTERVAL_MS: u32 = 5000;
const DEFAULT_SIZE_MULTIPLE: u32 = 8;
const DEFAULT_WAIT_FOR_SETTINGS: bool = true;
const DEFAULT_SETTINGS_TIMEOUT_MS: u32 = 3000;
const MAX_SIZE: u32 = 4096;
/// Frames waiting for inference while late frames are dropped: only the newest waits.
const DROPPING_QUEUE_FRAMES: usize = 1;
/// What travels from an input buffer to its output: flags, timestamps, offsets, metas.
pub(super) const METADATA_COPY: gst::BufferCopyFlags = gst::BufferCopyFlags::FLAGS
    .union(gst::BufferCopyFlags::TIMESTAMPS)
    .union(gst::BufferCopyFlags::META);
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
    pub execution_provider: ExecutionProvider,
    pub device_id: i32,
    pub fp16: bool,
    pub engine_cache_dir: Option<String>,
    pub max_queue: u32,
    pub drop_frames: DropFrames,
    pub threads: u32,
    pub stats_interval_ms: u32,
    pub resize_mode: ResizeMode,
    /// Pictures, or the final latents (`output=latent`).
    pub output: OutputMode,
    /// The loaded model's VAE scaling factor, for the latent caps.
    pub scaling_factor: f32,
    pub size_from_input: bool,
    pub size_multiple: u32,
    pub wait_for_settings: bool,
    pub settings_timeout_ms: u32,
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
        let mut live = LiveSettings::default();
        live.params.t_index_list =
            live::parse_t_index_list(DEFAULT_T_INDEX_LIST, live.params.num_inference_steps)
                .expect("default t-index-list is valid");
        live.transition_frames = DEFAULT_TRANSITION_FRAMES;
        Settings {
            model: None,
            live,
            width: DEFAULT_WIDTH,
            height: DEFAULT_HEIGHT,
            batch_size: DEFAULT_BATCH_SIZE,
            execution_provider: ExecutionProvider::default(),
            device_id: DEFAULT_DEVICE_ID,
            fp16: DEFAULT_FP16,
            engine_cache_dir: None,
            max_queue: DEFAULT_MAX_QUEUE,
            drop_frames: DropFrames::default(),
            threads: DEFAULT_THREADS,
            stats_interval_ms: DEFAULT_STATS_INTERVAL_MS,
            resize_mode: ResizeMode::default(),
            output: OutputMode::default(),
            scaling_factor: 1.0,
            size_from_input: false,
            size_multiple: DEFAULT_SIZE_MULTIPLE,
            wait_for_settings: DEFAULT_WAIT_FOR_SETTINGS,
            settings_timeout_ms: DEFAULT_SETTINGS_TIMEOUT_MS,
            unchecked: Unchecked::default(),
            control: ControlSettings::default(),
        }
    }
}

/// Streaming-thread side: input conversion and the running-time reference.
struct InputState {
    converter: Option<InputConverter>,
    /// The engine's preprocessing, run here on the streaming thread so the inference task
    /// only runs model calls.
    preprocessor: Option<Preprocessor>,
    segment: gst::FormattedSegment<gst::ClockTime>,
    next_tag: u64,
    /// Upstream is a live source (asked when caps arrive).
    upstream_live: bool,
    /// The model size for the current input caps.
    model_size: Option<(u32, u32)>,
}

impl Default for InputState {
    fn default() -> Self {
        InputState {
            converter: None,
            preprocessor: None,
            segment: gst::FormattedSegment::new(),
            next_tag: 0,
            upstream_live: false,
            model_size: None,
        }
    }
}

#[derive(Default)]
pub(super) struct Stats {
    pub frames_in: u64,
    pub frames_out: u64,
    pub frames_skipped: u64,
    pub frames_dropped: u64,
    /// Dropped oldest first because live input came faster than inference.
    pub frames_late: u64,
    pub frames_invalid: u64,
    pub batches: u64,
    pub first_inference: Option<Duration>,
    /// Calls after the first (which includes ONNX Runtime's warm-up).
    pub inference_total: Duration,
    pub inference_calls: u64,
    pub settings_applied: u64,
    pub settings_rejected: u64,
    pub provider: Option<&'static str>,
    pub latency_frames: usize,
    pub batch_size: usize,
    /// Input conversion (streaming thread) and output conversion (output thread) time,
    /// summed over the frames in and out.
    pub input_work: Duration,
    pub output_work: Duration,
    /// When the last `i2itransform-stats` message was posted.
    pub last_posted: Option<Instant>,
    /// The inference estimate in the last LATENCY answer, to tell when to re-announce it.
    pub announced_inference: Option<Duration>,
}

impl Stats {
    /// What a frame spends in conversion before and after the model, on average.
    pub fn conversion_estimate(&self) -> gst::ClockTime {
        let avg = |total: Duration, n: u64| {
            if n > 0 {
                total / n.min(u32::MAX as u64) as u32
            } else {
                Duration::ZERO
            }
        };
        let d = avg(self.input_work, self.frames_in) + avg(self.output_work, self.frames_out);
        gst::ClockTime::from_nseconds(d.as_nanos() as u64)
    }

    pub fn inference_estimate(&self) -> Option<Duration> {
        if self.inference_calls > 0 {
            Some(self.inference_total / self.inference_calls as u32)
        } else {
            self.first_inference
        }
    }
}

pub struct I2iTransform {
    pub(super) sinkpad: gst::Pad,
    pub(super) settingspad: gst::Pad,
    pub(super) srcpad: gst::Pad,
    pub(super) settings: Mutex<Settings>,
    input: Mutex<InputState>,
    /// Streaming thread to task: converted frames and serialized events.
    pub(super) queue: BoundedQueue<Item>,
    pub(super) worker: Mutex<Option<Worker>>,
    /// Task to output thread: finished pictures and the events between them.
    pub(super) out_queue: BoundedQueue<OutItem>,
    pub(super) out_state: Mutex<OutState>,
    out_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    pub(super) stats: Mutex<Stats>,
    /// True from start to stop: the load-time properties are fixed meanwhile.
    running: AtomicBool,
    /// A buffer came on the settings pad since start (`wait-for-settings`).
    pub(super) settings_received: Mutex<bool>,
    pub(super) settings_cond: Condvar,
    /// Control images: preprocessors, control pads, the previous output (`control.rs`).
    pub(super) control: control::ControlState,
}

#[glib::object_subclass]
impl ObjectSubclass for I2iTransform {
    const NAME: &'static str = "GstI2iTransform";
    type Type = super::I2iTransform;
    type ParentType = gst::Element;

    fn with_class(klass: &Self::Class) -> Self {
        let sinkpad = gst::Pad::builder_from_template(&klass.pad_template("sink").unwrap())
            .chain_function(|pad, parent, buffer| {
                I2iTransform::catch_panic_pad_function(
                    parent,
                    || Err(gst::FlowError::Error),
                    |imp| imp.sink_chain(pad, buffer),
                )
            })
            .event_function(|pad, parent, event| {
                I2iTransform::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.sink_event(pad, event),
                )
            })
            .query_function(|pad, parent, query| {
                I2iTransform::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.sink_query(pad, query),
                )
            })
            .activatemode_function(|_pad, parent, mode, active| {
                I2iTransform::catch_panic_pad_function(
                    parent,
                    || Err(gst::loggable_error!(CAT, "Panic activating the sink pad")),
                    |imp| imp.sink_activatemode(mode, active),
                )
            })
            .iterate_internal_links_function(|_pad, parent| {
                I2iTransform::catch_panic_pad_function(
                    parent,
                    || gst::Iterator::from_vec(vec![]),
                    |imp| gst::Iterator::from_vec(vec![imp.srcpad.clone()]),
                )
            })
            .build();

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

        let srcpad = gst::Pad::builder_from_template(&klass.pad_template("src").unwrap())
            .query_function(|pad, parent, query| {
                I2iTransform::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.src_query(pad, query),
                )
            })
            .activatemode_function(|_pad, parent, mode, active| {
                I2iTransform::catch_panic_pad_function(
                    parent,
                    || Err(gst::loggable_error!(CAT, "Panic activating the src pad")),
                    |imp| imp.src_activatemode(mode, active),
                )
            })
            .iterate_internal_links_function(|_pad, parent| {
                I2iTransform::catch_panic_pad_function(
                    parent,
                    || gst::Iterator::from_vec(vec![]),
                    |imp| gst::Iterator::from_vec(vec![imp.sinkpad.clone()]),
                )
            })
            .build();

        I2iTransform {
            sinkpad,
            settingspad,
            srcpad,
            settings: Mutex::new(Settings::default()),
            control: control::ControlState::default(),
            input: Mutex::new(InputState::default()),
            queue: BoundedQueue::new(DEFAULT_MAX_QUEUE as usize),
            worker: Mutex::new(None),
            out_queue: BoundedQueue::new(2),
            out_state: Mutex::new(OutState::default()),
            out_thread: Mutex::new(None),
            stats: Mutex::new(Stats::default()),
            running: AtomicBool::new(false),
            settings_received: Mutex::new(false),
            settings_cond: Condvar::new(),
        }
    }
}

impl I2iTransform {
    /// Refuses a setting: the old value stays, the user learns why on the bus.
    pub(super) fn refuse(&self, what: &str) {
        gst::warning!(CAT, imp = self, "{what}");
        gst::element_imp_warning!(self, gst::LibraryError::Settings, ("{}", what));
    }

    pub(super) fn fps(&self) -> Option<gst::Fraction> {
        self.input
            .lock()
            .unwrap()
            .converter
            .as_ref()
            .map(|c| c.in_info().fps())
    }

    /// Every output the element can produce at the configured size, in our preference order.
    /// `size`: the model size these caps are for; None: the current input's.
    fn output_caps(&self, fps: Option<gst::Fraction>, size: Option<(u32, u32)>) -> gst::Caps {
        let model_size = size.or(self.input.lock().unwrap().model_size);
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
        match fps {
            Some(fps) => builder.field("framerate", fps).build(),
            None => builder
                .field(
                    "framerate",
                    gst::FractionRange::new(
                        gst::Fraction::new(0, 1),
                        gst::Fraction::new(i32::MAX, 1),
                    ),
                )
                .build(),
        }
    }

    /// Output caps by downstream's preference (ours, RGB first, when it has none).
    pub(super) fn negotiate_output(
        &self,
        fps: gst::Fraction,
        size: (u32, u32),
    ) -> Result<(gst::Caps, gst_video::VideoInfo), String> {
        let ours = self.output_caps(Some(fps), Some(size));
        let peer = self.srcpad.peer_query_caps(None);
        let caps = peer.intersect_with_mode(&ours, gst::CapsIntersectMode::First);
        if caps.is_empty() {
            return Err(format!(
                "downstream accepts none of {ours}; it accepts {peer}. Set width/height to a size it takes, or add videoconvert/videoscale after i2itransform"
            ));
        }
        let mut caps = caps;
        caps.fixate();
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

    // ---- sink pad -------------------------------------------------------------------

    fn sink_activatemode(
        &self,
        mode: gst::PadMode,
        active: bool,
    ) -> Result<(), gst::LoggableError> {
        if mode != gst::PadMode::Push {
            return Err(gst::loggable_error!(
                CAT,
                "the sink pad works in push mode only"
            ));
        }
        let mut q = self.queue.lock();
        q.flushing = !active;
        if active {
            q.flow = Ok(gst::FlowSuccess::Ok);
        }
        self.queue.notify();
        Ok(())
    }

    fn sink_chain(
        &self,
        _pad: &gst::Pad,
        buffer: gst::Buffer,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        {
            let q = self.queue.lock();
            if q.flushing {
                return Err(gst::FlowError::Flushing);
            }
            q.flow?;
        }

        let convert_took;
        let frame = {
            let mut input = self.input.lock().unwrap();
            let Some(conv) = input.converter.as_ref() else {
                gst::element_imp_error!(
                    self,
                    gst::CoreError::Negotiation,
                    ["Received a video buffer before any caps"]
                );
                return Err(gst::FlowError::NotNegotiated);
            };
            let (model_w, model_h) = conv.model_size();
            let convert_start = Instant::now();
            let rgb = match conv.convert(buffer.as_ref()) {
                Ok(rgb) => rgb,
                Err(e) => {
                    // One unreadable frame does not stop the stream; it is counted.
                    gst::element_imp_warning!(
                        self,
                        gst::StreamError::Decode,
                        [
                            "Dropping input frame {:?} (pts {:?}): {}",
                            buffer.offset(),
                            buffer.pts(),
                            e
                        ]
                    );
                    self.stats.lock().unwrap().frames_invalid += 1;
                    return Ok(gst::FlowSuccess::Ok);
                }
            };

            let mut meta = gst::Buffer::new();
            {
                let meta = meta.get_mut().expect("new buffer is writable");
                if let Err(e) = buffer.copy_into(meta, METADATA_COPY, ..) {
                    gst::warning!(CAT, imp = self, "cannot copy the input's metadata: {e}");
                }
                // Metas tied to the input picture (video meta, crop, regions: all tagged)
                // do not describe the output; untagged ones (reference timestamps,
                // custom metas) carry over, as in GstBaseTransform.
                meta.foreach_meta_mut(|m| {
                    if m.tags().is_empty() {
                        std::ops::ControlFlow::Continue(gst::buffer::BufferMetaForeachAction::Keep)
                    } else {
                        std::ops::ControlFlow::Continue(
                            gst::buffer::BufferMetaForeachAction::Remove,
                        )
                    }
                });
            }
            let tag = input.next_tag;
            let Some(pre) = input.preprocessor.as_ref() else {
                return Err(gst::FlowError::Flushing);
            };
            let mut prepared = pre.prepare(tag, &rgb, model_w, model_h).map_err(|e| {
                gst::element_imp_error!(self, gst::CoreError::Negotiation, ["{}", e]);
                gst::FlowError::NotNegotiated
            })?;
            let running_time = input.segment.to_running_time(buffer.pts());
            self.prepare_control(&mut prepared, &rgb, (model_w, model_h), running_time);
            // Conversion and the engine's preprocessing: the streaming thread's work.
            convert_took = convert_start.elapsed();
            input.next_tag += 1;
            QueuedFrame {
                tag,
                prepared,
                meta,
                running_time,
                index: Some(buffer.offset())
                    .filter(|&o| o != gst::ffi::GST_BUFFER_OFFSET_NONE)
                    .unwrap_or(tag),
            }
        };

        let dropping = self.drops_frames(&self.settings.lock().unwrap());
        if dropping {
            // Live input faster than inference: the newest frame waits, older ones leave
            // unprocessed so that latency stays bounded.
            let late = {
                let mut q = self.queue.lock();
                if q.flushing {
                    return Err(gst::FlowError::Flushing);
                }
                q.flow?;
                let late = q.push_dropping_oldest(Item::Frame(frame), DROPPING_QUEUE_FRAMES);
                self.queue.notify();
                late
            };
            for item in late {
                if let Item::Frame(f) = item {
                    self.dropped_late(&f);
                }
            }
        } else {
            self.queue.push_wait(Item::Frame(frame), |q| {
                if q.flushing {
                    return Err(gst::FlowError::Flushing);
                }
                q.flow.map(|_| ())
            })?;
        }
        {
            let mut s = self.stats.lock().unwrap();
            s.frames_in += 1;
            s.input_work += convert_took;
        }
        Ok(gst::FlowSuccess::Ok)
    }

    /// Whether frames that inference cannot keep up with are dropped (`drop-frames`).
    fn drops_frames(&self, s: &Settings) -> bool {
        match s.drop_frames {
            DropFrames::Never => false,
            DropFrames::Always => true,
            DropFrames::Auto => self.input.lock().unwrap().upstream_live,
        }
    }

    /// Counts a frame dropped to keep latency bounded and posts a QoS message for it,
    /// as video decoders and sinks do for the frames they drop.
    fn dropped_late(&self, f: &QueuedFrame) {
        let (processed, dropped) = {
            let mut s = self.stats.lock().unwrap();
            s.frames_late += 1;
            (s.frames_in, s.frames_late)
        };
        let pts = f.meta.pts();
        let stream_time = pts.and_then(|t| self.input.lock().unwrap().segment.to_stream_time(t));
        gst::debug!(
            CAT,
            imp = self,
            "inference behind live input: dropping frame {} (pts {pts:?})",
            f.index
        );
        let msg = gst::message::Qos::builder(true)
            .running_time(f.running_time)
            .stream_time(stream_time)
            .timestamp(pts)
            .duration(f.meta.duration())
            .stats(
                gst::format::Buffers::from_u64(processed),
                gst::format::Buffers::from_u64(dropped),
            )
            .src(&*self.obj())
            .build();
        let _ = self.obj().post_message(msg);
    }

    fn enqueue(&self, item: Item) -> bool {
        let mut q = self.queue.lock();
        if q.flushing {
            return false;
        }
        q.push_back(item);
        self.queue.notify();
        true
    }

    fn sink_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        use gst::EventView;
        gst::log!(CAT, obj = pad, "event {event:?}");
        match event.view() {
            EventView::FlushStart(_) => {
                self.set_flushing(true);
                // Downstream first, so that a push in progress returns.
                let ret = self.srcpad.push_event(event);
                if let Err(e) = self.srcpad.pause_task() {
                    gst::warning!(CAT, imp = self, "cannot pause the task: {e}");
                }
                self.wait_output_idle();
                ret
            }
            EventView::FlushStop(_) => self.flush_stop(event),
            EventView::Caps(c) => match self.set_sink_caps(c.caps()) {
                Ok(item) => self.enqueue(Item::Event(item)),
                Err(e) => {
                    gst::element_imp_error!(
                        self,
                        gst::CoreError::Negotiation,
                        ["Cannot negotiate: {}", e]
                    );
                    false
                }
            },
            EventView::Segment(s) => {
                match s.segment().downcast_ref::<gst::ClockTime>() {
                    Some(seg) => self.input.lock().unwrap().segment = seg.clone(),
                    None => {
                        gst::element_imp_error!(
                            self,
                            gst::StreamError::Format,
                            [
                                "Only time segments are supported, got {:?}",
                                s.segment().format()
                            ]
                        );
                        return false;
                    }
                }
                self.enqueue(Item::Event(Deferred::Event(event)))
            }
            EventView::Eos(_) => self.enqueue(Item::Eos(event)),
            _ if event.is_serialized() => self.enqueue(Item::Event(Deferred::Event(event))),
            _ => self.srcpad.push_event(event),
        }
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
            (w, h, s.resize_mode)
        };
        let conv = InputConverter::new(&in_info, w, h, mode, converter_threads())?;
        self.input.lock().unwrap().model_size = Some(conv.model_size());
        let mut latency = gst::query::Latency::new();
        let upstream_live = self.sinkpad.peer_query(&mut latency) && latency.result().0;
        let (out_caps, out_info) = self.negotiate_output(in_info.fps(), conv.model_size())?;
        gst::info!(
            CAT,
            imp = self,
            "input {caps} -> model RGB {w}x{h} -> output {out_caps}"
        );
        {
            let mut input = self.input.lock().unwrap();
            input.converter = Some(conv);
            input.upstream_live = upstream_live;
        }
        gst::debug!(CAT, imp = self, "upstream live: {upstream_live}");
        Ok(Deferred::Caps(gst::event::Caps::new(&out_caps), out_info))
    }

    /// Stops (or lets) the task and the output thread take items and the chain queue them.
    fn set_flushing(&self, flushing: bool) {
        {
            let mut q = self.queue.lock();
            q.flushing = flushing;
            if !flushing {
                q.flow = Ok(gst::FlowSuccess::Ok);
            }
            self.queue.notify();
        }
        let mut o = self.out_queue.lock();
        o.flushing = flushing;
        self.out_queue.notify();
    }

    /// Waits until the output thread is done with the item it is pushing (if any).
    fn wait_output_idle(&self) {
        let mut o = self.out_queue.lock();
        while o.busy {
            o = self.out_queue.wait(o);
        }
    }

    /// After FLUSH_START paused the task and the output thread: drops every frame queued
    /// or in flight, resets the engine and lets the stream start again.
    fn flush_stop(&self, event: gst::Event) -> bool {
        // Oldest first: handed to the output thread, then waiting in the engine, then not
        // taken from the input queue yet.
        let mut keep = Vec::new();
        let mut dropped = 0;
        {
            let items = self.out_queue.lock().drain();
            for item in items {
                match item {
                    OutItem::Frame(..) => dropped += 1,
                    OutItem::Event(d) => keep.push(d),
                    OutItem::Eos(_) | OutItem::Drained(_) => (),
                }
            }
        }
        {
            let mut guard = self.worker.lock().unwrap();
            if let Some(w) = guard.as_mut() {
                dropped += w.batch.len() + w.in_flight.len();
                w.batch.clear();
                w.in_flight.clear();
                w.engine.reset();
                self.flush_control();
                keep.extend(w.deferred.drain(..).map(|(_, d)| d));
            }
        }
        {
            let items = self.queue.lock().drain();
            for item in items {
                match item {
                    Item::Frame(_) => dropped += 1,
                    Item::Event(d) => keep.push(d),
                    Item::Eos(_) | Item::Drain(_) => (),
                }
            }
        }
        gst::debug!(CAT, imp = self, "flush: dropped {dropped} frames");
        self.stats.lock().unwrap().frames_dropped += dropped as u64;

        let ret = self.srcpad.push_event(event);
        // Sticky events that had not left yet (caps, stream-start, tags) still describe
        // the stream after the flush; the old segment does not.
        for d in keep {
            match d {
                Deferred::Caps(ev, info) => {
                    let _ = self.srcpad.store_sticky_event(&ev);
                    match OutputConverter::new(&info, converter_threads()) {
                        Ok(c) => {
                            let mut st = self.out_state.lock().unwrap();
                            st.conv = Some(c);
                            st.width = info.width();
                            st.height = info.height();
                        }
                        Err(e) => gst::warning!(CAT, imp = self, "{e}"),
                    }
                    // Caps with another model size (size-from-input) that had not reached
                    // the task: the engine (empty after the flush) is loaded at that size.
                    let mut guard = self.worker.lock().unwrap();
                    if let Some(w) = guard.as_mut()
                        && (info.width(), info.height()) != (w.load.width, w.load.height)
                        && self.reload_at(w, info.width(), info.height()).is_err()
                    {
                        return false;
                    }
                }
                Deferred::Event(ev) => {
                    if ev.is_sticky()
                        && ev.type_() != gst::EventType::Segment
                        && ev.type_() != gst::EventType::Eos
                    {
                        let _ = self.srcpad.store_sticky_event(&ev);
                    }
                }
            }
        }
        self.set_flushing(false);
        if self.srcpad.mode() == gst::PadMode::Push
            && let Err(e) = self.start_task()
        {
            gst::error!(CAT, imp = self, "cannot restart the task: {e}");
            return false;
        }
        ret
    }

    fn sink_query(&self, pad: &gst::Pad, query: &mut gst::QueryRef) -> bool {
        use gst::QueryViewMut;
        match query.view_mut() {
            QueryViewMut::Caps(q) => {
                let templ = pad.pad_template_caps();
                let caps = match q.filter() {
                    Some(f) => f.intersect_with_mode(&templ, gst::CapsIntersectMode::First),
                    None => templ,
                };
                q.set_result(&caps);
                true
            }
            QueryViewMut::Drain(_) => {
                // Upstream wants every frame it sent out of the element before going on
                // (a worker finishing its jobs, a decoder reconfiguring): the partial batch
                // and the frames in the stream batch come out first.
                if !self.drain_and_wait() {
                    return false;
                }
                gst::Pad::query_default(pad, Some(&*self.obj()), query)
            }
            QueryViewMut::Allocation(q) => {
                // Frames are converted and released in the chain function: upstream's
                // buffers are not held, and padded strides are fine (mapped by VideoMeta).
                q.add_allocation_meta::<gst_video::VideoMeta>(None);
                true
            }
            _ => gst::Pad::query_default(pad, Some(&*self.obj()), query),
        }
    }

    /// Queues a drain behind the frames already queued and waits until the output thread
    /// has pushed all of them; false when a flush or a stop intervened.
    fn drain_and_wait(&self) -> bool {
        let (tx, rx) = mpsc::channel();
        if !self.enqueue(Item::Drain(tx)) {
            return false;
        }
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(()) => return true,
                Err(mpsc::RecvTimeoutError::Disconnected) => return false,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let q = self.queue.lock();
                    if q.flushing || q.flow.is_err() {
                        return false;
                    }
                }
            }
        }
    }

    // ---- settings pad -----------------------------------------------------------------

    fn settings_chain(&self, buffer: gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        let result = match buffer.map_readable() {
            Ok(map) => SettingsUpdate::from_json(map.as_slice()).map(|u| {
                let mut s = self.settings.lock().unwrap();
                s.live.apply_valid(&u)
            }),
            Err(_) => Err("settings buffer cannot be read".to_string()),
        };
        {
            // Even a refused update means the holder is there: the stream need not wait.
            *self.settings_received.lock().unwrap() = true;
            self.settings_cond.notify_all();
        }
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
            self.stats.lock().unwrap().settings_rejected += 1;
            self.refuse(&format!("settings pad: refused {}", refused.join("; ")));
            // Upstream too: settingssrc tells the settings holder, whose consoles show it.
            let event = gst::event::CustomUpstream::new(
                gst::Structure::builder(crate::settings::state::REFUSED_EVENT)
                    .field("refused", refused.join("\n"))
                    .build(),
            );
            let _ = self.settingspad.push_event(event);
        }
        Ok(gst::FlowSuccess::Ok)
    }

    // ---- src pad ----------------------------------------------------------------------

    fn src_activatemode(&self, mode: gst::PadMode, active: bool) -> Result<(), gst::LoggableError> {
        if mode != gst::PadMode::Push {
            return Err(gst::loggable_error!(
                CAT,
                "the src pad works in push mode only"
            ));
        }
        if active {
            {
                let mut o = self.out_queue.lock();
                o.drain();
                o.flushing = false;
                o.stop = false;
                o.busy = false;
            }
            let obj = self.obj().clone();
            let thread = std::thread::Builder::new()
                .name("i2i-output".into())
                .spawn(move || obj.imp().output_loop())
                .map_err(|e| gst::loggable_error!(CAT, "cannot start the output thread: {e}"))?;
            *self.out_thread.lock().unwrap() = Some(thread);
            {
                let mut q = self.queue.lock();
                q.flushing = false;
                q.flow = Ok(gst::FlowSuccess::Ok);
            }
            self.start_task()
                .map_err(|e| gst::loggable_error!(CAT, "cannot start the task: {e}"))
        } else {
            self.set_flushing(true);
            {
                let mut o = self.out_queue.lock();
                o.stop = true;
                self.out_queue.notify();
            }
            let stopped = self.srcpad.stop_task();
            if let Some(thread) = self.out_thread.lock().unwrap().take() {
                let _ = thread.join();
            }
            self.out_queue.lock().drain();
            stopped.map_err(|e| gst::loggable_error!(CAT, "cannot stop the task: {e}"))
        }
    }

    fn src_query(&self, pad: &gst::Pad, query: &mut gst::QueryRef) -> bool {
        use gst::QueryViewMut;
        match query.view_mut() {
            QueryViewMut::Caps(q) => {
                let ours = self.output_caps(self.fps(), None);
                let caps = match q.filter() {
                    Some(f) => f.intersect_with_mode(&ours, gst::CapsIntersectMode::First),
                    None => ours,
                };
                q.set_result(&caps);
                true
            }
            QueryViewMut::Latency(q) => {
                let mut peer = gst::query::Latency::new();
                if !self.sinkpad.peer_query(&mut peer) {
                    return false;
                }
                let (live, min, max) = peer.result();
                let frame = self
                    .fps()
                    .filter(|f| f.numer() > 0)
                    .and_then(|f| {
                        gst::ClockTime::SECOND.mul_div_floor(f.denom() as u64, f.numer() as u64)
                    })
                    .unwrap_or(gst::ClockTime::ZERO);
                // Before taking the stats lock: the chain takes it under the input lock.
                let dropping = self.drops_frames(&self.settings.lock().unwrap());
                let (ours, queue) = {
                    let s = self.settings.lock().unwrap();
                    let mut stats = self.stats.lock().unwrap();
                    let (latency_frames, batch_size) = if stats.batch_size > 0 {
                        (stats.latency_frames, stats.batch_size)
                    } else {
                        let n = s.live.params.t_index_list.len().max(1);
                        let b = s.batch_size as usize;
                        ((n - 1) * b, b)
                    };
                    // Before the first model call, assume the element keeps up with the
                    // frame rate; the measured time replaces this guess once known.
                    let inference = stats
                        .inference_estimate()
                        .map(|d| gst::ClockTime::from_nseconds(d.as_nanos() as u64))
                        .unwrap_or(frame);
                    stats.announced_inference = stats.inference_estimate();
                    let queue = if dropping {
                        gst::ClockTime::ZERO
                    } else {
                        frame.max(inference) * s.max_queue as u64
                    };
                    (
                        added_latency(latency_frames, batch_size, frame, inference, dropping)
                            + stats.conversion_estimate(),
                        queue,
                    )
                };
                gst::debug!(
                    CAT,
                    imp = self,
                    "latency: upstream {min} (live {live}), adding {ours}"
                );
                q.set(live, min + ours, max.map(|m| m + ours + queue));
                true
            }
            _ => gst::Pad::query_default(pad, Some(&*self.obj()), query),
        }
    }

    // ---- state --------------------------------------------------------------------------

    fn start(&self) -> Result<(), gst::StateChangeError> {
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
        let intra_threads = if s.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            s.threads as usize
        };
        let opts = LoadOptions {
            model_dir: model.clone().into(),
            width: s.width,
            height: s.height,
            batch_size: s.batch_size as usize,
            execution_provider: s.execution_provider.into(),
            device_id: s.device_id,
            fp16: s.fp16,
            engine_cache_dir: s.engine_cache_dir.clone().map(Into::into),
            intra_threads,
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
        let mut engine = Engine::load(&opts, &s.live.params).map_err(|e| {
            gst::element_imp_error!(
                self,
                gst::LibraryError::Init,
                ("Could not load the model in {}: {}", model, e),
                ["{:?}", e]
            );
            gst::StateChangeError
        })?;
        self.start_control(&mut engine, &s.control, (opts.width, opts.height))?;
        let provider = provider_name(engine.provider());
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
            .field("fp16", s.fp16)
            .field("num-inference-steps", s.live.params.num_inference_steps)
            .field(
                "t-index-list",
                live::format_t_index_list(&s.live.params.t_index_list),
            )
            .field("latency-frames", engine.latency_frames() as u32)
            .field("load-ms", load_time.as_secs_f64() * 1000.0)
            .build();
        let _ = self.obj().post_message(
            gst::message::Element::builder(started_msg)
                .src(&*self.obj())
                .build(),
        );
        {
            let mut st = self.stats.lock().unwrap();
            *st = Stats::default();
            st.provider = Some(provider);
            st.latency_frames = engine.latency_frames();
            st.batch_size = s.batch_size as usize;
            st.last_posted = Some(Instant::now());
        }
        *self.input.lock().unwrap() = InputState::default();
        *self.settings_received.lock().unwrap() = false;
        {
            let mut q = self.queue.lock();
            q.drain();
            q.max_frames = s.max_queue as usize;
        }
        // The output thread may hold two batches: one being pushed, one ready.
        self.out_queue.lock().max_frames = 2 * s.batch_size as usize;
        let latent = s.output == OutputMode::Latent;
        let mut engine = engine;
        engine.set_latent_output(latent);
        self.settings.lock().unwrap().scaling_factor = engine.scaling_factor();
        *self.out_state.lock().unwrap() = OutState {
            conv: None,
            width: s.width,
            height: s.height,
            latent,
        };
        self.input.lock().unwrap().preprocessor = Some(engine.preprocessor());
        *self.worker.lock().unwrap() = Some(Worker::new(engine, opts, s.live));
        self.running.store(true, Ordering::SeqCst);
        self.obj().notify("provider");
        Ok(())
    }

    fn stop(&self) {
        self.running.store(false, Ordering::SeqCst);
        *self.worker.lock().unwrap() = None;
        *self.out_state.lock().unwrap() = OutState::default();
        *self.input.lock().unwrap() = InputState::default();
        self.queue.lock().drain();
    }

    /// Posts the `stats` structure as an element message when `stats-interval` has passed
    /// since the last one, or always with `force` (at EOS).
    pub(super) fn post_stats(&self, force: bool) {
        let interval = self.settings.lock().unwrap().stats_interval_ms;
        {
            let mut s = self.stats.lock().unwrap();
            let due = s.last_posted.is_none_or(|t| {
                interval > 0 && t.elapsed() >= Duration::from_millis(interval as u64)
            });
            if !(force || due) {
                return;
            }
            s.last_posted = Some(Instant::now());
        }
        let msg = gst::message::Element::builder(self.stats_structure())
            .src(&*self.obj())
            .build();
        let _ = self.obj().post_message(msg);
    }

    pub(super) fn stats_structure(&self) -> gst::Structure {
        let queued = self.queue.lock().frames() as u32;
        let s = self.stats.lock().unwrap();
        let ms = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        gst::Structure::builder("i2itransform-stats")
            .field("frames-in", s.frames_in)
            .field("frames-out", s.frames_out)
            .field("frames-skipped", s.frames_skipped)
            .field("frames-dropped", s.frames_dropped)
            .field("frames-late", s.frames_late)
            .field("frames-invalid", s.frames_invalid)
            .field("batches", s.batches)
            .field("avg-inference-ms", ms(s.inference_estimate()))
            .field("first-inference-ms", ms(s.first_inference))
            .field("queued", queued)
            .field("settings-applied", s.settings_applied)
            .field("settings-rejected", s.settings_rejected)
            .field("provider", s.provider.unwrap_or(""))
            .field("control-fallbacks", self.control.fallbacks())
            .build()
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
                    .blurb("What the picture should become")
                    .default_value(Some(p.prompt.as_str()))
                    .mutable_playing()
                    .build(),
                glib::ParamSpecString::builder("negative-prompt")
                    .nick("Negative prompt")
                    .blurb("What to steer away from (cfg-type full or initialize)")
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
                    .default_value(Some(DEFAULT_T_INDEX_LIST))
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
                glib::ParamSpecEnum::builder_with_default("cfg-type", CfgType::from(p.cfg_type))
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
                glib::ParamSpecEnum::builder_with_default("execution-provider", ExecutionProvider::Auto)
                    .nick("Execution provider")
                    .blurb("ONNX Runtime execution provider; naming an unavailable one is an error")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecInt::builder("device-id")
                    .nick("Device ID")
                    .blurb("GPU index for CUDA / TensorRT")
                    .minimum(0)
                    .maximum(255)
                    .default_value(DEFAULT_DEVICE_ID)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("fp16")
                    .nick("FP16")
                    .blurb("Half precision where the provider supports it (TensorRT / CUDA)")
                    .default_value(DEFAULT_FP16)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("engine-cache-dir")
                    .nick("Engine cache directory")
                    .blurb("Where TensorRT keeps built engines and timing caches")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("max-queue")
                    .nick("Max queue")
                    .blurb("Frames waiting for inference before upstream blocks")
                    .minimum(1)
                    .maximum(1024)
                    .default_value(DEFAULT_MAX_QUEUE)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("output", OutputMode::Pixels)
                    .nick("Output")
                    .blurb("pixels: decoded pictures; latent: the final latents (application/x-i2i-latent, float32 [1, 4, height/8, width/8], the VAE decoder's input) for i2idecode on this or another machine")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("resize-mode", ResizeMode::Stretch)
                    .nick("Resize mode")
                    .blurb("How the input fills the model size: stretch (aspect ratio not kept), crop (fill, cutting what sticks out) or fit (whole picture, black borders)")
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
                glib::ParamSpecEnum::builder_with_default("drop-frames", DropFrames::Auto)
                    .nick("Drop frames")
                    .blurb("When frames come faster than inference: drop the oldest waiting frame so latency stays bounded (counted in stats frames-late, posted as QoS messages), or keep every frame and make upstream wait (latency grows on live input). auto drops on live sources only")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("threads")
                    .nick("Threads")
                    .blurb("ONNX Runtime intra-op threads; 0 = the CPUs this process may use")
                    .maximum(1024)
                    .default_value(DEFAULT_THREADS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("wait-for-settings")
                    .nick("Wait for settings")
                    .blurb("When the settings pad is linked, hold the first frame until the first settings arrive (at most settings-timeout), so that it already runs with the holder's prompt")
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
                glib::ParamSpecUInt::builder("stats-interval")
                    .nick("Stats interval")
                    .blurb("Milliseconds between i2itransform-stats element messages (the stats property's structure; gst-launch-1.0 -m shows them), also posted at EOS; 0 = only at EOS")
                    .maximum(3_600_000)
                    .default_value(DEFAULT_STATS_INTERVAL_MS)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("frames-in, frames-out, frames-skipped (similarity filter), frames-dropped (flush), frames-late (dropped to keep up with live input), frames-invalid, batches, avg-inference-ms, first-inference-ms, queued, settings-applied, settings-rejected, provider")
                    .read_only()
                    .build(),
                glib::ParamSpecString::builder("provider")
                    .nick("Provider")
                    .blurb("The execution provider actually running (after start)")
                    .read_only()
                    .build(),
            ]
            .into_iter()
            .chain(control::param_specs())
            .collect()
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let name = pspec.name();
        if pspec.flags().contains(gst::PARAM_FLAG_MUTABLE_READY)
            && self.running.load(Ordering::SeqCst)
        {
            self.refuse(&format!(
                "{name} refused while the stream runs: it is used when the model loads; set it in the NULL or READY state"
            ));
            return;
        }
        let mut s = self.settings.lock().unwrap();
        gst::debug!(CAT, imp = self, "setting {name} to {value:?}");
        if !self.running.load(Ordering::SeqCst) {
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
                let stopped = !self.running.load(Ordering::SeqCst);
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
            "cfg-type" => s.live.params.cfg_type = value.get::<CfgType>().unwrap().into(),
            "add-noise" => s.live.params.add_noise = value.get().unwrap(),
            "similarity-threshold" => {
                s.live.params.similarity_threshold = value.get::<f64>().unwrap() as f32
            }
            "max-skip-frames" => s.live.params.max_skip_frames = value.get().unwrap(),
            "transition-frames" => s.live.transition_frames = value.get().unwrap(),
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
            "blend-mode" => s.live.blend_mode = value.get::<BlendMode>().unwrap().into(),
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
            "execution-provider" => s.execution_provider = value.get().unwrap(),
            "device-id" => s.device_id = value.get().unwrap(),
            "fp16" => s.fp16 = value.get().unwrap(),
            "engine-cache-dir" => s.engine_cache_dir = value.get().unwrap(),
            "max-queue" => {
                s.max_queue = value.get().unwrap();
                let max = s.max_queue as usize;
                drop(s);
                self.queue.lock().max_frames = max;
                self.queue.notify();
            }
            "threads" => s.threads = value.get().unwrap(),
            "stats-interval" => s.stats_interval_ms = value.get().unwrap(),
            "resize-mode" => s.resize_mode = value.get().unwrap(),
            "output" => s.output = value.get().unwrap(),
            "size-from-input" => s.size_from_input = value.get().unwrap(),
            "size-multiple" => s.size_multiple = value.get().unwrap(),
            "wait-for-settings" => s.wait_for_settings = value.get().unwrap(),
            "settings-timeout" => s.settings_timeout_ms = value.get().unwrap(),
            "drop-frames" => {
                s.drop_frames = value.get().unwrap();
                drop(s);
                // A frame producer waiting on a full queue looks again.
                self.queue.notify();
            }
            _ => unreachable!("property {name} is not registered"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = self.settings.lock().unwrap();
        let p = &s.live.params;
        let u = &s.unchecked;
        match pspec.name() {
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
            "cfg-type" => CfgType::from(p.cfg_type).to_value(),
            "add-noise" => p.add_noise.to_value(),
            "similarity-threshold" => (p.similarity_threshold as f64).to_value(),
            "max-skip-frames" => p.max_skip_frames.to_value(),
            "transition-frames" => s.live.transition_frames.to_value(),
            "prompt-blend" => live::format_prompt_blend(&s.live.prompt_blend).to_value(),
            "seed-blend" => live::format_seed_blend(&s.live.seed_blend).to_value(),
            "blend-mode" => BlendMode::from(s.live.blend_mode).to_value(),
            "batch-size" => s.batch_size.to_value(),
            "width" => s.width.to_value(),
            "height" => s.height.to_value(),
            "execution-provider" => s.execution_provider.to_value(),
            "device-id" => s.device_id.to_value(),
            "fp16" => s.fp16.to_value(),
            "engine-cache-dir" => s.engine_cache_dir.to_value(),
            "max-queue" => s.max_queue.to_value(),
            "threads" => s.threads.to_value(),
            "drop-frames" => s.drop_frames.to_value(),
            "stats-interval" => s.stats_interval_ms.to_value(),
            "resize-mode" => s.resize_mode.to_value(),
            "output" => s.output.to_value(),
            "size-from-input" => s.size_from_input.to_value(),
            "size-multiple" => s.size_multiple.to_value(),
            "wait-for-settings" => s.wait_for_settings.to_value(),
            "settings-timeout" => s.settings_timeout_ms.to_value(),
            "stats" => {
                drop(s);
                self.stats_structure().to_value()
            }
            "provider" => {
                drop(s);
                self.stats.lock().unwrap().provider.to_value()
            }
            name => unreachable!("property {name} is not registered"),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        obj.add_pad(&self.sinkpad).unwrap();
        obj.add_pad(&self.settingspad).unwrap();
        obj.add_pad(&self.srcpad).unwrap();
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
            let range = gst::IntRange::new(1, i32::MAX);
            let fps =
                gst::FractionRange::new(gst::Fraction::new(0, 1), gst::Fraction::new(i32::MAX, 1));
            let sink_caps = gst::Caps::builder("video/x-raw")
                .field("format", gst::List::new(SINK_FORMATS))
                .field("width", range)
                .field("height", range)
                .field("framerate", fps)
                .build();
            let mut src_caps = gst::Caps::builder("video/x-raw")
                .field("format", gst::List::new(SRC_FORMATS))
                .field("width", range)
                .field("height", range)
                .field("framerate", fps)
                .build();
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
        self.request_control_pad(templ, name)
    }

    fn release_pad(&self, pad: &gst::Pad) {
        self.release_control_pad(pad);
    }

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        gst::debug!(CAT, imp = self, "{transition:?}");
        if transition == gst::StateChange::ReadyToPaused {
            self.start()?;
        }
        let ret = self.parent_change_state(transition);
        match transition {
            gst::StateChange::ReadyToPaused if ret.is_err() => self.stop(),
            gst::StateChange::PausedToReady => self.stop(),
            _ => (),
        }
        ret
    }
}
