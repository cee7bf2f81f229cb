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
use std::sync::{LazyLock, Mutex, mpsc};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::convert::{InputConverter, OutputConverter, converter_threads};
use super::live::{self, LiveSettings};
use super::output::{OutItem, OutState};
use super::queue::BoundedQueue;
use super::task::{Deferred, Item, QueuedFrame, Worker};
use super::{BlendMode, CfgType, ExecutionProvider, provider_name};
use crate::diffusion::{self, Engine, LoadOptions, Preprocessor};
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
const MAX_SIZE: u32 = 4096;
/// What travels from an input buffer to its output: flags, timestamps, offsets, metas.
pub(super) const METADATA_COPY: gst::BufferCopyFlags = gst::BufferCopyFlags::FLAGS
    .union(gst::BufferCopyFlags::TIMESTAMPS)
    .union(gst::BufferCopyFlags::META);
const MAX_BATCH_SIZE: u32 = 64;

/// Sink formats: what decoders and cameras hand out, so `jpegdec` links directly.
const SINK_FORMATS: [&str; 8] = ["RGB", "RGBx", "RGBA", "BGR", "BGRx", "BGRA", "I420", "NV12"];
/// Src formats in the order offered when downstream has no preference.
const SRC_FORMATS: [&str; 3] = ["RGB", "RGBA", "I420"];

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
    pub threads: u32,
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

/// Streaming-thread side: input conversion and the running-time reference.
struct InputState {
    converter: Option<InputConverter>,
    /// The engine's preprocessing, run here on the streaming thread so the inference task
    /// only runs model calls.
    preprocessor: Option<Preprocessor>,
    segment: gst::FormattedSegment<gst::ClockTime>,
    next_tag: u64,
}

impl Default for InputState {
    fn default() -> Self {
        InputState {
            converter: None,
            preprocessor: None,
            segment: gst::FormattedSegment::new(),
            next_tag: 0,
        }
    }
}

#[derive(Default)]
pub(super) struct Stats {
    pub frames_in: u64,
    pub frames_out: u64,
    pub frames_skipped: u64,
    pub frames_dropped: u64,
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
    /// The inference estimate in the last LATENCY answer, to tell when to re-announce it.
    pub announced_inference: Option<Duration>,
}

impl Stats {
    pub fn inference_estimate(&self) -> Option<Duration> {
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
            queue: BoundedQueue::new(DEFAULT_MAX_QUEUE as usize),
            worker: Mutex::new(None),
            out_queue: BoundedQueue::new(2),
            out_state: Mutex::new(OutState::default()),
            out_thread: Mutex::new(None),
            stats: Mutex::new(Stats::default()),
            running: AtomicBool::new(false),
        }
    }
}

impl I2iTransform {
    /// Refuses a setting: the old value stays, the user learns why on the bus.
    pub(super) fn refuse(&self, what: &str) {
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
    pub(super) fn negotiate_output(
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
            let Some(pre) = input.preprocessor.as_ref() else {
                return Err(gst::FlowError::Flushing);
            };
            let prepared = pre.prepare(tag, &rgb).map_err(|e| {
                gst::element_imp_error!(self, gst::CoreError::Negotiation, ["{}", e]);
                gst::FlowError::NotNegotiated
            })?;
            input.next_tag += 1;
            let running_time = input.segment.to_running_time(buffer.pts());
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

        self.queue.push_wait(Item::Frame(frame), |q| {
            if q.flushing {
                return Err(gst::FlowError::Flushing);
            }
            q.flow.map(|_| ())
        })?;
        self.stats.lock().unwrap().frames_in += 1;
        Ok(gst::FlowSuccess::Ok)
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
            Ok(map) => SettingsUpdate::from_json(map.as_slice()).and_then(|u| {
                let mut s = self.settings.lock().unwrap();
                s.live.apply_update(&u)
            }),
            Err(_) => Err("settings buffer cannot be read".to_string()),
        };
        match result {
            Ok(changed) => {
                gst::debug!(CAT, imp = self, "settings pad changed {changed:?}");
                for name in changed {
                    if self.obj().find_property(name).is_some() {
                        self.obj().notify(name);
                    }
                }
            }
            Err(e) => {
                self.stats.lock().unwrap().settings_rejected += 1;
                self.refuse(&format!("settings pad: ignoring update: {e}"));
            }
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
            let mut q = self.queue.lock();
            q.drain();
            q.max_frames = s.max_queue as usize;
        }
        // The output thread may hold two batches: one being pushed, one ready.
        self.out_queue.lock().max_frames = 2 * s.batch_size as usize;
        *self.out_state.lock().unwrap() = OutState {
            conv: None,
            width: s.width,
            height: s.height,
        };
        self.input.lock().unwrap().preprocessor = Some(engine.preprocessor());
        *self.worker.lock().unwrap() = Some(Worker::new(engine, s.batch_size as usize, s.live));
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

    fn stats_structure(&self) -> gst::Structure {
        let queued = self.queue.lock().frames() as u32;
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
                self.queue.lock().max_frames = max;
                self.queue.notify();
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
