// SPDX-License-Identifier: MPL-2.0
//! The `i2itransform` element.
//!
//! Threads: the upstream streaming thread runs the sink chain, which converts each frame
//! to RGB8 at the model size and queues it (blocking while `max-queue` frames wait); the
//! src pad's task takes frames off the queue, collects batches of `batch-size` and runs the
//! engine; an output thread turns the engine's pictures into buffers of the output format
//! and pushes them, so that this work overlaps the next model call. Serialized events
//! travel through the same queues and leave after the output of the last frame that came
//! before them, so the stream keeps its order although the engine holds frames back (the
//! stream batch).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, LazyLock, Mutex, mpsc};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::convert::{InputConverter, OutputConverter, converter_threads};
use super::live::{self, LiveSettings};
use super::smooth::Smoother;
use super::{BlendMode, CfgType, ExecutionProvider, provider_name};
use crate::diffusion::{self, Engine, InputFrame, LoadOptions, OutputFrame};
use crate::settings::state::APPLIED_EVENT;
use crate::settings::{self, SETTINGS_CAPS_NAME, SettingsUpdate};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
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
const MAX_SIZE: u32 = 4096;
/// What travels from an input buffer to its output: flags, timestamps, offsets, metas.
const METADATA_COPY: gst::BufferCopyFlags = gst::BufferCopyFlags::FLAGS
    .union(gst::BufferCopyFlags::TIMESTAMPS)
    .union(gst::BufferCopyFlags::META);
const MAX_BATCH_SIZE: u32 = 64;

/// Sink formats: what decoders and cameras hand out, so `jpegdec` links directly.
const SINK_FORMATS: [&str; 8] = ["RGB", "RGBx", "RGBA", "BGR", "BGRx", "BGRA", "I420", "NV12"];
/// Src formats in the order offered when downstream has no preference.
const SRC_FORMATS: [&str; 3] = ["RGB", "RGBA", "I420"];

#[derive(Debug, Clone)]
struct Settings {
    model: Option<String>,
    live: LiveSettings,
    width: u32,
    height: u32,
    batch_size: u32,
    execution_provider: ExecutionProvider,
    device_id: i32,
    fp16: bool,
    engine_cache_dir: Option<String>,
    max_queue: u32,
    threads: u32,
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
            threads: DEFAULT_THREADS,
        }
    }
}

/// A frame converted on the streaming thread, waiting for inference.
struct QueuedFrame {
    tag: u64,
    rgb: Vec<u8>,
    /// A buffer without memory carrying the input's timestamps, offsets, flags and metas.
    meta: gst::Buffer,
    running_time: Option<gst::ClockTime>,
    /// The input offset (frame index) when upstream set one, else the element's count.
    index: u64,
}

/// A serialized event with what the task must do with it.
enum Deferred {
    Event(gst::Event),
    /// New output caps and the output format they describe.
    Caps(gst::Event, gst_video::VideoInfo),
}

enum Item {
    Frame(QueuedFrame),
    Event(Deferred),
    Eos(gst::Event),
    /// A DRAIN query: every frame before it comes out, then the sender is told.
    Drain(mpsc::Sender<()>),
}

struct Queue {
    items: VecDeque<Item>,
    /// Frames among `items` (events do not count against `max-queue`).
    frames: usize,
    max_frames: usize,
    flushing: bool,
    /// The task's last flow result, returned by the chain function.
    flow: Result<gst::FlowSuccess, gst::FlowError>,
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            items: VecDeque::new(),
            frames: 0,
            max_frames: DEFAULT_MAX_QUEUE as usize,
            flushing: true,
            flow: Ok(gst::FlowSuccess::Ok),
        }
    }
}

/// Streaming-thread side: input conversion and the running-time reference.
struct InputState {
    converter: Option<InputConverter>,
    segment: gst::FormattedSegment<gst::ClockTime>,
    next_tag: u64,
}

impl Default for InputState {
    fn default() -> Self {
        InputState {
            converter: None,
            segment: gst::FormattedSegment::new(),
            next_tag: 0,
        }
    }
}

struct FrameMeta {
    tag: u64,
    meta: gst::Buffer,
}

/// Task side: the engine and everything in flight. Exists from start to stop.
struct Worker {
    engine: Engine,
    batch_size: usize,
    batch: Vec<QueuedFrame>,
    /// Frames handed to the engine and not out yet, in input order.
    in_flight: VecDeque<FrameMeta>,
    /// Events waiting for the output of the frame (tag) that came before them.
    deferred: VecDeque<(u64, Deferred)>,
    /// The live settings the engine runs with.
    applied: LiveSettings,
    /// Transitions and blends on top of the engine's own prompt and seed.
    smoother: Smoother,
}

impl Worker {
    /// Tag of the last frame taken from the queue that has not been pushed yet.
    fn last_pending_tag(&self) -> Option<u64> {
        self.batch
            .last()
            .map(|f| f.tag)
            .or_else(|| self.in_flight.back().map(|f| f.tag))
    }
}

/// What the task hands to the output thread, in stream order.
enum OutItem {
    /// An engine picture and the metadata of its input frame.
    Frame(OutputFrame, gst::Buffer),
    Event(Deferred),
    Eos(gst::Event),
    /// Everything before it has been pushed: answers a DRAIN query.
    Drained(mpsc::Sender<()>),
}

/// Between the task and the output thread.
struct OutQueue {
    items: VecDeque<OutItem>,
    frames: usize,
    max_frames: usize,
    /// Items stay queued (for the flush to sort out) and nothing is pushed.
    flushing: bool,
    /// The output thread ends.
    stop: bool,
    /// The output thread is working on an item.
    busy: bool,
}

impl Default for OutQueue {
    fn default() -> Self {
        OutQueue {
            items: VecDeque::new(),
            frames: 0,
            max_frames: 2,
            flushing: true,
            stop: true,
            busy: false,
        }
    }
}

/// Output thread side: the negotiated output format.
#[derive(Default)]
struct OutState {
    conv: Option<OutputConverter>,
    width: u32,
    height: u32,
}

#[derive(Default)]
struct Stats {
    frames_in: u64,
    frames_out: u64,
    frames_skipped: u64,
    frames_dropped: u64,
    frames_invalid: u64,
    batches: u64,
    first_inference: Option<Duration>,
    /// Calls after the first (which includes ONNX Runtime's warm-up).
    inference_total: Duration,
    inference_calls: u64,
    settings_applied: u64,
    settings_rejected: u64,
    provider: Option<&'static str>,
    latency_frames: usize,
    batch_size: usize,
    /// The inference estimate in the last LATENCY answer, to tell when to re-announce it.
    announced_inference: Option<Duration>,
}

impl Stats {
    fn inference_estimate(&self) -> Option<Duration> {
        if self.inference_calls > 0 {
            Some(self.inference_total / self.inference_calls as u32)
        } else {
            self.first_inference
        }
    }
}

/// What the element adds to the upstream latency: a frame waits for its batch to fill
/// (`batch_size - 1` frames), behind the stream batch (`latency_frames`), then for one
/// model call.
pub(crate) fn added_latency(
    latency_frames: usize,
    batch_size: usize,
    frame_duration: gst::ClockTime,
    inference: gst::ClockTime,
) -> gst::ClockTime {
    let frames = (latency_frames + batch_size.saturating_sub(1)) as u64;
    frame_duration * frames + inference
}

pub struct I2iTransform {
    sinkpad: gst::Pad,
    settingspad: gst::Pad,
    srcpad: gst::Pad,
    settings: Mutex<Settings>,
    input: Mutex<InputState>,
    queue: Mutex<Queue>,
    queue_cond: Condvar,
    worker: Mutex<Option<Worker>>,
    out_queue: Mutex<OutQueue>,
    out_cond: Condvar,
    out_state: Mutex<OutState>,
    out_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    stats: Mutex<Stats>,
    /// True from start to stop: the load-time properties are fixed meanwhile.
    running: AtomicBool,
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
            input: Mutex::new(InputState::default()),
            queue: Mutex::new(Queue::default()),
            queue_cond: Condvar::new(),
            worker: Mutex::new(None),
            out_queue: Mutex::new(OutQueue::default()),
            out_cond: Condvar::new(),
            out_state: Mutex::new(OutState::default()),
            out_thread: Mutex::new(None),
            stats: Mutex::new(Stats::default()),
            running: AtomicBool::new(false),
        }
    }
}

impl I2iTransform {
    /// Refuses a setting: the old value stays, the user learns why on the bus.
    fn refuse(&self, what: &str) {
        gst::warning!(CAT, imp = self, "{what}");
        gst::element_imp_warning!(self, gst::LibraryError::Settings, ("{}", what));
    }

    fn fps(&self) -> Option<gst::Fraction> {
        self.input
            .lock()
            .unwrap()
            .converter
            .as_ref()
            .map(|c| c.in_info().fps())
    }

    /// Every output the element can produce at the configured size, in our preference order.
    fn output_caps(&self, fps: Option<gst::Fraction>) -> gst::Caps {
        let (w, h) = {
            let s = self.settings.lock().unwrap();
            (s.width as i32, s.height as i32)
        };
        let builder = gst::Caps::builder("video/x-raw")
            .field("format", gst::List::new(SRC_FORMATS))
            .field("width", w)
            .field("height", h)
            .field("pixel-aspect-ratio", gst::Fraction::new(1, 1));
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
    fn negotiate_output(
        &self,
        fps: gst::Fraction,
    ) -> Result<(gst::Caps, gst_video::VideoInfo), String> {
        let ours = self.output_caps(Some(fps));
        let peer = self.srcpad.peer_query_caps(None);
        let caps = peer.intersect_with_mode(&ours, gst::CapsIntersectMode::First);
        if caps.is_empty() {
            return Err(format!(
                "downstream accepts none of {ours}; it accepts {peer}. Set width/height to a size it takes, or add videoconvert/videoscale after i2itransform"
            ));
        }
        let mut caps = caps;
        caps.fixate();
        let info = gst_video::VideoInfo::from_caps(&caps)
            .map_err(|e| format!("cannot use output caps {caps}: {e}"))?;
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
        let mut q = self.queue.lock().unwrap();
        q.flushing = !active;
        if active {
            q.flow = Ok(gst::FlowSuccess::Ok);
        }
        self.queue_cond.notify_all();
        Ok(())
    }

    fn sink_chain(
        &self,
        _pad: &gst::Pad,
        buffer: gst::Buffer,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        {
            let q = self.queue.lock().unwrap();
            if q.flushing {
                return Err(gst::FlowError::Flushing);
            }
            q.flow?;
        }

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
            input.next_tag += 1;
            let running_time = input.segment.to_running_time(buffer.pts());
            QueuedFrame {
                tag,
                rgb,
                meta,
                running_time,
                index: Some(buffer.offset())
                    .filter(|&o| o != gst::ffi::GST_BUFFER_OFFSET_NONE)
                    .unwrap_or(tag),
            }
        };

        let mut q = self.queue.lock().unwrap();
        while q.frames >= q.max_frames && !q.flushing && q.flow.is_ok() {
            q = self.queue_cond.wait(q).unwrap();
        }
        if q.flushing {
            return Err(gst::FlowError::Flushing);
        }
        q.flow?;
        q.items.push_back(Item::Frame(frame));
        q.frames += 1;
        self.queue_cond.notify_all();
        drop(q);
        self.stats.lock().unwrap().frames_in += 1;
        Ok(gst::FlowSuccess::Ok)
    }

    fn enqueue(&self, item: Item) -> bool {
        let mut q = self.queue.lock().unwrap();
        if q.flushing {
            return false;
        }
        q.items.push_back(item);
        self.queue_cond.notify_all();
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
        let (w, h) = {
            let s = self.settings.lock().unwrap();
            (s.width, s.height)
        };
        let conv = InputConverter::new(&in_info, w, h, converter_threads())?;
        let (out_caps, out_info) = self.negotiate_output(in_info.fps())?;
        gst::info!(
            CAT,
            imp = self,
            "input {caps} -> model RGB {w}x{h} -> output {out_caps}"
        );
        self.input.lock().unwrap().converter = Some(conv);
        Ok(Deferred::Caps(gst::event::Caps::new(&out_caps), out_info))
    }

    /// Stops (or lets) the task and the output thread take items and the chain queue them.
    fn set_flushing(&self, flushing: bool) {
        {
            let mut q = self.queue.lock().unwrap();
            q.flushing = flushing;
            if !flushing {
                q.flow = Ok(gst::FlowSuccess::Ok);
            }
            self.queue_cond.notify_all();
        }
        let mut o = self.out_queue.lock().unwrap();
        o.flushing = flushing;
        self.out_cond.notify_all();
    }

    /// Waits until the output thread is done with the item it is pushing (if any).
    fn wait_output_idle(&self) {
        let mut o = self.out_queue.lock().unwrap();
        while o.busy {
            o = self.out_cond.wait(o).unwrap();
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
            let mut o = self.out_queue.lock().unwrap();
            o.frames = 0;
            for item in o.items.drain(..) {
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
                keep.extend(w.deferred.drain(..).map(|(_, d)| d));
            }
        }
        {
            let mut q = self.queue.lock().unwrap();
            q.frames = 0;
            for item in q.items.drain(..) {
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
                        Ok(c) => self.out_state.lock().unwrap().conv = Some(c),
                        Err(e) => gst::warning!(CAT, imp = self, "{e}"),
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
                    let q = self.queue.lock().unwrap();
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
                let mut o = self.out_queue.lock().unwrap();
                o.items.clear();
                o.frames = 0;
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
                let mut q = self.queue.lock().unwrap();
                q.flushing = false;
                q.flow = Ok(gst::FlowSuccess::Ok);
            }
            self.start_task()
                .map_err(|e| gst::loggable_error!(CAT, "cannot start the task: {e}"))
        } else {
            self.set_flushing(true);
            {
                let mut o = self.out_queue.lock().unwrap();
                o.stop = true;
                self.out_cond.notify_all();
            }
            let stopped = self.srcpad.stop_task();
            if let Some(thread) = self.out_thread.lock().unwrap().take() {
                let _ = thread.join();
            }
            self.out_queue.lock().unwrap().items.clear();
            stopped.map_err(|e| gst::loggable_error!(CAT, "cannot stop the task: {e}"))
        }
    }

    fn src_query(&self, pad: &gst::Pad, query: &mut gst::QueryRef) -> bool {
        use gst::QueryViewMut;
        match query.view_mut() {
            QueryViewMut::Caps(q) => {
                let ours = self.output_caps(self.fps());
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
                    (
                        added_latency(latency_frames, batch_size, frame, inference),
                        frame * s.max_queue as u64,
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

    // ---- the task ---------------------------------------------------------------------

    fn start_task(&self) -> Result<(), glib::BoolError> {
        let obj = self.obj().clone();
        self.srcpad.start_task(move || obj.imp().task_iteration())
    }

    fn task_iteration(&self) {
        let item = {
            let mut q = self.queue.lock().unwrap();
            loop {
                if q.flushing || q.flow.is_err() {
                    drop(q);
                    let _ = self.srcpad.pause_task();
                    return;
                }
                if let Some(item) = q.items.pop_front() {
                    if matches!(item, Item::Frame(_)) {
                        q.frames -= 1;
                    }
                    self.queue_cond.notify_all();
                    break item;
                }
                q = self.queue_cond.wait(q).unwrap();
            }
        };

        let mut guard = self.worker.lock().unwrap();
        let Some(w) = guard.as_mut() else {
            drop(guard);
            let _ = self.srcpad.pause_task();
            return;
        };
        let res = match item {
            Item::Frame(f) => {
                w.batch.push(f);
                if w.batch.len() >= w.batch_size {
                    self.run_batch(w)
                } else {
                    Ok(())
                }
            }
            Item::Event(d) => match w.last_pending_tag() {
                Some(tag) => {
                    w.deferred.push_back((tag, d));
                    Ok(())
                }
                None => self.send_out(OutItem::Event(d)),
            },
            Item::Eos(ev) => self.finish_stream(w, ev),
            Item::Drain(done) => self
                .drain_engine(w)
                .and_then(|()| self.send_out(OutItem::Drained(done))),
        };
        drop(guard);
        if let Err(err) = res {
            self.on_flow_error(err);
        }
    }

    /// A flow error in the task (the engine, or the output side refusing items).
    fn on_flow_error(&self, err: gst::FlowError) {
        if self.record_flow_error(err) {
            match err {
                gst::FlowError::Flushing | gst::FlowError::Eos => {
                    gst::debug!(CAT, imp = self, "task pausing: {err:?}");
                }
                _ => {
                    // The engine's errors are posted where they happen; downstream still
                    // gets the frames already done, then EOS.
                    let mut o = self.out_queue.lock().unwrap();
                    o.items.push_back(OutItem::Eos(gst::event::Eos::new()));
                    self.out_cond.notify_all();
                }
            }
        }
        let _ = self.srcpad.pause_task();
    }

    /// Keeps the first flow error (returned to upstream by the chain function); false when
    /// one was recorded already.
    fn record_flow_error(&self, err: gst::FlowError) -> bool {
        let first = {
            let mut q = self.queue.lock().unwrap();
            let first = q.flow.is_ok();
            if first {
                q.flow = Err(err);
            }
            self.queue_cond.notify_all();
            first
        };
        let _o = self.out_queue.lock().unwrap();
        self.out_cond.notify_all();
        first
    }

    fn run_batch(&self, w: &mut Worker) -> Result<(), gst::FlowError> {
        let frames = std::mem::take(&mut w.batch);
        let Some(first) = frames.first() else {
            return Ok(());
        };
        // Controlled properties (GstController) take their value for this batch.
        if let Some(rt) = first.running_time {
            let _ = self.obj().sync_values(rt);
        }
        let index = first.index;
        self.apply_live(w, index)?;
        if let Err(e) = w
            .smoother
            .before_batch(&mut w.engine, &w.applied, frames.len() as u32)
        {
            self.refuse(&format!("transition or blend not applied: {e}"));
        }

        let mut inputs = Vec::with_capacity(frames.len());
        for f in frames {
            w.in_flight.push_back(FrameMeta {
                tag: f.tag,
                meta: f.meta,
            });
            inputs.push(InputFrame {
                tag: f.tag,
                rgb: f.rgb,
            });
        }
        let start = Instant::now();
        let outs = w.engine.process(inputs).map_err(|e| {
            gst::element_imp_error!(self, gst::StreamError::Failed, ["Inference failed: {}", e]);
            gst::FlowError::Error
        })?;
        self.record_inference(start.elapsed());
        self.push_outputs(w, outs)
    }

    fn record_inference(&self, took: Duration) {
        let announce = {
            let mut s = self.stats.lock().unwrap();
            s.batches += 1;
            if s.first_inference.is_none() {
                s.first_inference = Some(took);
            } else {
                s.inference_total += took;
                s.inference_calls += 1;
            }
            gst::trace!(CAT, imp = self, "model call took {took:?}");
            // Re-announce the latency when the estimate moved by more than a quarter.
            match (s.announced_inference, s.inference_estimate()) {
                (None, Some(_)) => s.batches == 1 || s.inference_calls == 1,
                (Some(old), Some(new)) => {
                    let (a, b) = (old.as_secs_f64(), new.as_secs_f64());
                    (a - b).abs() > 0.25 * a.max(b) && (a - b).abs() > 0.001
                }
                _ => false,
            }
        };
        if announce {
            let _ = self
                .obj()
                .post_message(gst::message::Latency::builder().src(&*self.obj()).build());
        }
    }

    /// Hands the engine the settings changed since the last batch and tells the
    /// application which frame they first hold for.
    fn apply_live(&self, w: &mut Worker, index: u64) -> Result<(), gst::FlowError> {
        let mut desired = self.settings.lock().unwrap().live.clone();
        if desired == w.applied {
            return Ok(());
        }
        if desired.params != *w.engine.params() {
            let old = w.engine.params();
            let restructure = desired.params.t_index_list != old.t_index_list
                || desired.params.num_inference_steps != old.num_inference_steps;
            if restructure && w.engine.in_flight() > 0 {
                // Finish the frames in flight with the schedule they started on.
                let outs = w.engine.drain().map_err(|e| {
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::Failed,
                        ["Inference failed: {}", e]
                    );
                    gst::FlowError::Error
                })?;
                self.push_outputs(w, outs)?;
            }
            let before = w.engine.params().clone();
            if let Err(e) = w.engine.set_params(&desired.params) {
                self.refuse(&format!("settings not applied: {e}"));
                let current = w.engine.params().clone();
                let reverted = {
                    let mut s = self.settings.lock().unwrap();
                    let mut before = s.live.clone();
                    before.params = current.clone();
                    let reverted = s.live.changed(&before);
                    s.live.params = current.clone();
                    reverted
                };
                for name in reverted {
                    self.obj().notify(name);
                }
                desired.params = current;
                if desired == w.applied {
                    return Ok(());
                }
            } else {
                w.smoother.params_changed(&before, &desired.params);
            }
        }
        let changed = w.applied.changed(&desired);
        let report = desired.to_update().changes_since(&w.applied.to_update());
        let latency_before = w.engine.latency_frames();
        w.applied = desired;
        {
            let mut s = self.stats.lock().unwrap();
            s.settings_applied += 1;
            s.latency_frames = w.engine.latency_frames();
        }
        let p = &w.applied.params;
        gst::info!(CAT, imp = self, "frame {index}: applying {changed:?}");
        let s = gst::Structure::builder("i2i-settings-applied")
            .field("frame-index", index)
            .field("changed", gst::Array::new(changed.iter().copied()))
            .field("prompt", &p.prompt)
            .field("negative-prompt", &p.negative_prompt)
            .field("seed", p.seed)
            .field("t-index-list", live::format_t_index_list(&p.t_index_list))
            .field("num-inference-steps", p.num_inference_steps)
            .field("guidance-scale", p.guidance_scale as f64)
            .field("delta", p.delta as f64)
            .field("cfg-type", live::cfg_type_nick(p.cfg_type))
            .field("add-noise", p.add_noise)
            .field("similarity-threshold", p.similarity_threshold as f64)
            .field("max-skip-frames", p.max_skip_frames)
            .field("transition-frames", w.applied.transition_frames)
            .field(
                "prompt-blend",
                live::format_prompt_blend(&w.applied.prompt_blend),
            )
            .field("seed-blend", live::format_seed_blend(&w.applied.seed_blend))
            .field("blend-mode", w.applied.blend_mode.name())
            .build();
        let _ = self
            .obj()
            .post_message(gst::message::Element::builder(s).src(&*self.obj()).build());
        // The same news upstream on the settings pad: settingssrc reports it to the
        // settings holder, whose consoles show it. Not linked: nobody to tell.
        if !report.is_empty() && self.settingspad.is_linked() {
            let json = String::from_utf8(report.to_json()).expect("JSON is UTF-8");
            let event = gst::event::CustomUpstream::new(
                gst::Structure::builder(APPLIED_EVENT)
                    .field("frame-index", index)
                    .field("settings", json)
                    .build(),
            );
            if !self.settingspad.push_event(event) {
                gst::debug!(CAT, imp = self, "settings pad: applied report not taken");
            }
        }
        if latency_before != w.engine.latency_frames() {
            let _ = self
                .obj()
                .post_message(gst::message::Latency::builder().src(&*self.obj()).build());
        }
        Ok(())
    }

    /// Hands the engine's finished frames (and the events due after them) to the output
    /// thread.
    fn push_outputs(&self, w: &mut Worker, outs: Vec<OutputFrame>) -> Result<(), gst::FlowError> {
        for out in outs {
            let meta = match w.in_flight.iter().position(|m| m.tag == out.tag) {
                Some(0) => w.in_flight.pop_front().expect("front exists"),
                Some(pos) => {
                    gst::error!(
                        CAT,
                        imp = self,
                        "engine returned frame {} before {} earlier ones",
                        out.tag,
                        pos
                    );
                    w.in_flight.remove(pos).expect("position exists")
                }
                None => {
                    gst::error!(CAT, imp = self, "engine returned unknown frame {}", out.tag);
                    continue;
                }
            };
            let tag = out.tag;
            self.send_out(OutItem::Frame(out, meta.meta))?;
            self.push_deferred(w, Some(tag))?;
        }
        Ok(())
    }

    /// Queues an item for the output thread, waiting while it has enough frames to do.
    fn send_out(&self, item: OutItem) -> Result<(), gst::FlowError> {
        let frame = matches!(item, OutItem::Frame(..));
        let mut o = self.out_queue.lock().unwrap();
        loop {
            let refused = if o.flushing {
                Err(gst::FlowError::Flushing)
            } else {
                self.queue.lock().unwrap().flow
            };
            if let Err(e) = refused {
                if frame {
                    // Flushing or stopping: this frame is lost with the others in flight.
                    self.stats.lock().unwrap().frames_dropped += 1;
                }
                return Err(e);
            }
            if !frame || o.frames < o.max_frames {
                break;
            }
            o = self.out_cond.wait(o).unwrap();
        }
        if frame {
            o.frames += 1;
        }
        o.items.push_back(item);
        self.out_cond.notify_all();
        Ok(())
    }

    /// Sends the deferred events due after frame `upto` (all of them for None).
    fn push_deferred(&self, w: &mut Worker, upto: Option<u64>) -> Result<(), gst::FlowError> {
        while let Some((after, _)) = w.deferred.front() {
            if upto.is_some_and(|t| *after > t) {
                break;
            }
            let (_, d) = w.deferred.pop_front().expect("front exists");
            self.send_out(OutItem::Event(d))?;
        }
        Ok(())
    }

    /// EOS: the partial batch goes through, the engine gives back every frame in
    /// flight, then the remaining events and EOS leave.
    fn finish_stream(&self, w: &mut Worker, eos: gst::Event) -> Result<(), gst::FlowError> {
        self.drain_engine(w)?;
        gst::debug!(CAT, imp = self, "all frames out of the engine, EOS follows");
        self.send_out(OutItem::Eos(eos))
    }

    /// The partial batch goes through and the engine gives back every frame in flight,
    /// followed by the events that waited for them.
    fn drain_engine(&self, w: &mut Worker) -> Result<(), gst::FlowError> {
        if !w.batch.is_empty() {
            self.run_batch(w)?;
        }
        if w.engine.in_flight() > 0 {
            let outs = w.engine.drain().map_err(|e| {
                gst::element_imp_error!(
                    self,
                    gst::StreamError::Failed,
                    ["Inference failed: {}", e]
                );
                gst::FlowError::Error
            })?;
            self.push_outputs(w, outs)?;
        }
        if !w.in_flight.is_empty() {
            gst::error!(
                CAT,
                imp = self,
                "{} frames did not come out of the engine when draining",
                w.in_flight.len()
            );
            w.in_flight.clear();
        }
        self.push_deferred(w, None)
    }

    // ---- the output thread --------------------------------------------------------------

    fn output_loop(&self) {
        gst::debug!(CAT, imp = self, "output thread running");
        loop {
            let item = {
                let mut o = self.out_queue.lock().unwrap();
                loop {
                    if o.stop {
                        gst::debug!(CAT, imp = self, "output thread ends");
                        return;
                    }
                    if !o.flushing
                        && let Some(item) = o.items.pop_front()
                    {
                        if matches!(item, OutItem::Frame(..)) {
                            o.frames -= 1;
                        }
                        o.busy = true;
                        self.out_cond.notify_all();
                        break item;
                    }
                    o = self.out_cond.wait(o).unwrap();
                }
            };
            if let Err(err) = self.output_item(item) {
                self.on_output_error(err);
            }
            // Only now: a flush waiting for the output to be idle then sees the error
            // recorded before it resets the flow.
            let mut o = self.out_queue.lock().unwrap();
            o.busy = false;
            self.out_cond.notify_all();
        }
    }

    fn on_output_error(&self, err: gst::FlowError) {
        if !self.record_flow_error(err) {
            return;
        }
        match err {
            gst::FlowError::Flushing | gst::FlowError::Eos => {
                gst::debug!(CAT, imp = self, "output stops: {err:?}");
            }
            gst::FlowError::NotLinked | gst::FlowError::NotNegotiated => {
                gst::element_imp_error!(
                    self,
                    gst::StreamError::Failed,
                    ("Internal data stream error."),
                    ["streaming stopped, reason {err:?}"]
                );
                self.srcpad.push_event(gst::event::Eos::new());
            }
            _ => {
                self.srcpad.push_event(gst::event::Eos::new());
            }
        }
    }

    /// Converts and pushes one frame, or pushes one event.
    fn output_item(&self, item: OutItem) -> Result<(), gst::FlowError> {
        let mut st = self.out_state.lock().unwrap();
        match item {
            OutItem::Frame(out, meta) => {
                if self.queue.lock().unwrap().flow.is_err() {
                    // After an error nothing more goes out.
                    self.stats.lock().unwrap().frames_dropped += 1;
                    return Ok(());
                }
                let mut rgb = Vec::new();
                diffusion::to_rgb8(&out.pixels, st.width, st.height, &mut rgb);
                self.renegotiate_if_asked(&mut st)?;
                let Some(conv) = st.conv.as_ref() else {
                    gst::element_imp_error!(
                        self,
                        gst::CoreError::Negotiation,
                        ["No output caps before the first frame"]
                    );
                    return Err(gst::FlowError::NotNegotiated);
                };
                let mut buffer = conv.convert(rgb).map_err(|e| {
                    gst::element_imp_error!(self, gst::StreamError::Failed, ["{}", e]);
                    gst::FlowError::Error
                })?;
                {
                    let buffer = buffer.get_mut().expect("new buffer is writable");
                    if let Err(e) = meta.copy_into(buffer, METADATA_COPY, ..) {
                        gst::warning!(CAT, imp = self, "cannot copy metadata: {e}");
                    }
                }
                drop(st);
                if let Err(e) = self.srcpad.push(buffer) {
                    // Flushing or stopping: this frame is lost with the others in flight.
                    self.stats.lock().unwrap().frames_dropped += 1;
                    return Err(e);
                }
                let mut s = self.stats.lock().unwrap();
                s.frames_out += 1;
                if out.skipped {
                    s.frames_skipped += 1;
                }
                Ok(())
            }
            OutItem::Event(d) => self.push_event_item(&mut st, d),
            OutItem::Eos(ev) => {
                drop(st);
                gst::debug!(CAT, imp = self, "pushing EOS");
                self.srcpad.push_event(ev);
                Ok(())
            }
            OutItem::Drained(done) => {
                // The query may have given up (flush): nobody to tell then.
                let _ = done.send(());
                Ok(())
            }
        }
    }

    fn push_event_item(&self, st: &mut OutState, d: Deferred) -> Result<(), gst::FlowError> {
        match d {
            Deferred::Caps(ev, info) => {
                let conv = OutputConverter::new(&info, converter_threads()).map_err(|e| {
                    gst::element_imp_error!(self, gst::CoreError::Negotiation, ["{}", e]);
                    gst::FlowError::NotNegotiated
                })?;
                if !self.srcpad.push_event(ev) {
                    gst::warning!(CAT, imp = self, "downstream refused caps {info:?}");
                    return Err(gst::FlowError::NotNegotiated);
                }
                st.conv = Some(conv);
            }
            Deferred::Event(ev) => {
                let t = ev.type_();
                if !self.srcpad.push_event(ev) {
                    gst::debug!(CAT, imp = self, "downstream refused {t:?}");
                }
            }
        }
        Ok(())
    }

    /// Downstream asked (RECONFIGURE): pick the output format again before the next frame.
    fn renegotiate_if_asked(&self, st: &mut OutState) -> Result<(), gst::FlowError> {
        if !self.srcpad.check_reconfigure() {
            return Ok(());
        }
        let Some(fps) = st.conv.as_ref().map(|o| o.out_info().fps()) else {
            return Ok(());
        };
        match self.negotiate_output(fps) {
            Ok((caps, info)) => {
                if self.srcpad.current_caps().as_ref() != Some(&caps) {
                    self.push_event_item(st, Deferred::Caps(gst::event::Caps::new(&caps), info))?;
                }
                Ok(())
            }
            Err(e) => {
                self.srcpad.mark_reconfigure();
                gst::warning!(CAT, imp = self, "renegotiation failed: {e}");
                Err(gst::FlowError::NotNegotiated)
            }
        }
    }

    // ---- state --------------------------------------------------------------------------

    fn start(&self) -> Result<(), gst::StateChangeError> {
        let s = self.settings.lock().unwrap().clone();
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
        let engine = Engine::load(&opts, &s.live.params).map_err(|e| {
            gst::element_imp_error!(
                self,
                gst::LibraryError::Init,
                ("Could not load the model in {}: {}", model, e),
                ["{:?}", e]
            );
            gst::StateChangeError
        })?;
        let provider = provider_name(engine.provider());
        gst::info!(
            CAT,
            imp = self,
            "model {model} loaded in {:?}, running on {provider}",
            started.elapsed()
        );
        {
            let mut st = self.stats.lock().unwrap();
            *st = Stats::default();
            st.provider = Some(provider);
            st.latency_frames = engine.latency_frames();
            st.batch_size = s.batch_size as usize;
        }
        *self.input.lock().unwrap() = InputState::default();
        {
            let mut q = self.queue.lock().unwrap();
            q.items.clear();
            q.frames = 0;
            q.max_frames = s.max_queue as usize;
        }
        // The output thread may hold two batches: one being pushed, one ready.
        self.out_queue.lock().unwrap().max_frames = 2 * s.batch_size as usize;
        *self.out_state.lock().unwrap() = OutState {
            conv: None,
            width: s.width,
            height: s.height,
        };
        *self.worker.lock().unwrap() = Some(Worker {
            engine,
            batch_size: s.batch_size as usize,
            batch: Vec::new(),
            in_flight: VecDeque::new(),
            deferred: VecDeque::new(),
            applied: s.live,
            smoother: Smoother::new(),
        });
        self.running.store(true, Ordering::SeqCst);
        self.obj().notify("provider");
        Ok(())
    }

    fn stop(&self) {
        self.running.store(false, Ordering::SeqCst);
        *self.worker.lock().unwrap() = None;
        *self.out_state.lock().unwrap() = OutState::default();
        *self.input.lock().unwrap() = InputState::default();
        let mut q = self.queue.lock().unwrap();
        q.items.clear();
        q.frames = 0;
    }

    fn stats_structure(&self) -> gst::Structure {
        let queued = self.queue.lock().unwrap().frames as u32;
        let s = self.stats.lock().unwrap();
        let ms = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        gst::Structure::builder("i2itransform-stats")
            .field("frames-in", s.frames_in)
            .field("frames-out", s.frames_out)
            .field("frames-skipped", s.frames_skipped)
            .field("frames-dropped", s.frames_dropped)
            .field("frames-invalid", s.frames_invalid)
            .field("batches", s.batches)
            .field("avg-inference-ms", ms(s.inference_estimate()))
            .field("first-inference-ms", ms(s.first_inference))
            .field("queued", queued)
            .field("settings-applied", s.settings_applied)
            .field("settings-rejected", s.settings_rejected)
            .field("provider", s.provider.unwrap_or(""))
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
                glib::ParamSpecUInt::builder("threads")
                    .nick("Threads")
                    .blurb("ONNX Runtime intra-op threads; 0 = the CPUs this process may use")
                    .maximum(1024)
                    .default_value(DEFAULT_THREADS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("frames-in, frames-out, frames-skipped (similarity filter), frames-dropped (flush), frames-invalid, batches, avg-inference-ms, first-inference-ms, queued, settings-applied, settings-rejected, provider")
                    .read_only()
                    .build(),
                glib::ParamSpecString::builder("provider")
                    .nick("Provider")
                    .blurb("The execution provider actually running (after start)")
                    .read_only()
                    .build(),
            ]
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
        match name {
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
                if !v.is_multiple_of(8) {
                    drop(s);
                    self.refuse(&format!(
                        "{name} {v} refused: the model needs a multiple of 8 (latents are 1/8 of the picture)"
                    ));
                } else if name == "width" {
                    s.width = v;
                } else {
                    s.height = v;
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
                let mut q = self.queue.lock().unwrap();
                q.max_frames = max;
                self.queue_cond.notify_all();
            }
            "threads" => s.threads = value.get().unwrap(),
            _ => unreachable!("property {name} is not registered"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = self.settings.lock().unwrap();
        let p = &s.live.params;
        match pspec.name() {
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
            let src_caps = gst::Caps::builder("video/x-raw")
                .field("format", gst::List::new(SRC_FORMATS))
                .field("width", range)
                .field("height", range)
                .field("framerate", fps)
                .build();
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
            ]
        });
        TEMPLATES.as_ref()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_adds_batching_stream_batch_and_one_call() {
        let frame = gst::ClockTime::from_mseconds(40);
        let call = gst::ClockTime::from_mseconds(70);
        // n = 2, batch 1: one frame behind, plus the call.
        assert_eq!(
            added_latency(1, 1, frame, call),
            gst::ClockTime::from_mseconds(110)
        );
        // n = 3, batch 3: (n-1)*b = 6 frames in the stream batch, 2 waiting for the batch.
        assert_eq!(
            added_latency(6, 3, frame, call),
            gst::ClockTime::from_mseconds(390)
        );
        assert_eq!(added_latency(0, 1, frame, call), call);
    }
}
