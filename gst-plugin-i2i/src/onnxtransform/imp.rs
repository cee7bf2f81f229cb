// SPDX-License-Identifier: MPL-2.0
//! The `onnxtransform` element: pads, events, queries, state and properties; the inference
//! task and the output thread are in `task.rs`, the model binding in `model.rs`.
//!
//! Threads, as in `i2itransform`: the upstream streaming thread converts each frame to RGB8
//! at the model size and to the input tensor's values, and queues it (blocking while
//! `max-queue` frames wait, or dropping the oldest on live input); the src pad's task
//! collects batches of `batch-size` and only runs the model; an output thread turns the
//! output tensors into buffers of the output format and pushes them.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex, mpsc};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::model::{
    self, ImageModel, ModelOptions, NormalizationOverrides, Preprocess, format_triple, parse_triple,
};
use super::task::{Deferred, Item, OutItem, OutState, QueuedFrame, Worker};
use super::{ChannelOrder, Layout};
use crate::i2itransform::{DropFrames, ExecutionProvider, ResizeMode, provider_name};
use crate::infer::convert::{
    InputConverter, OutputConverter, SINK_FORMATS, SRC_FORMATS, converter_threads,
};
use crate::infer::latency::added_latency;
use crate::infer::queue::BoundedQueue;

pub(super) static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "onnxtransform",
        gst::DebugColorFlags::empty(),
        Some("Image-to-image ONNX model"),
    )
});

const DEFAULT_BATCH_SIZE: u32 = 1;
const DEFAULT_MAX_QUEUE: u32 = 4;
const DEFAULT_THREADS: u32 = 0;
const DEFAULT_DEVICE_ID: i32 = 0;
const DEFAULT_FP16: bool = true;
const DEFAULT_STATS_INTERVAL_MS: u32 = 5000;
const MAX_SIZE: u32 = 8192;
const MAX_BATCH_SIZE: u32 = 64;
/// Frames waiting for inference while late frames are dropped: only the newest waits.
const DROPPING_QUEUE_FRAMES: usize = 1;
/// What travels from an input buffer to its output: flags, timestamps, offsets, metas.
pub(super) const METADATA_COPY: gst::BufferCopyFlags = gst::BufferCopyFlags::FLAGS
    .union(gst::BufferCopyFlags::TIMESTAMPS)
    .union(gst::BufferCopyFlags::META);

#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub model: Option<String>,
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
    pub overrides: NormalizationOverrides,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            model: None,
            width: 0,
            height: 0,
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
            overrides: NormalizationOverrides::default(),
        }
    }
}

/// Streaming-thread side: input conversion and preprocessing.
struct InputState {
    converter: Option<InputConverter>,
    preprocess: Option<Preprocess>,
    segment: gst::FormattedSegment<gst::ClockTime>,
    next_tag: u64,
    upstream_live: bool,
    /// Model input and output sizes for the current caps.
    sizes: Option<((u32, u32), (u32, u32))>,
}

impl Default for InputState {
    fn default() -> Self {
        InputState {
            converter: None,
            preprocess: None,
            segment: gst::FormattedSegment::new(),
            next_tag: 0,
            upstream_live: false,
            sizes: None,
        }
    }
}

#[derive(Default)]
pub(super) struct Stats {
    pub frames_in: u64,
    pub frames_out: u64,
    pub frames_dropped: u64,
    pub frames_late: u64,
    pub frames_invalid: u64,
    pub batches: u64,
    pub first_inference: Option<Duration>,
    pub inference_total: Duration,
    pub inference_calls: u64,
    pub provider: Option<&'static str>,
    pub batch_size: usize,
    pub input_work: Duration,
    pub output_work: Duration,
    pub last_posted: Option<Instant>,
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

    fn conversion_estimate(&self) -> gst::ClockTime {
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
}

pub struct OnnxTransform {
    pub(super) sinkpad: gst::Pad,
    pub(super) srcpad: gst::Pad,
    pub(super) settings: Mutex<Settings>,
    input: Mutex<InputState>,
    pub(super) queue: BoundedQueue<Item>,
    pub(super) worker: Mutex<Option<Worker>>,
    pub(super) out_queue: BoundedQueue<OutItem>,
    pub(super) out_state: Mutex<OutState>,
    out_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    pub(super) stats: Mutex<Stats>,
    running: AtomicBool,
}

#[glib::object_subclass]
impl ObjectSubclass for OnnxTransform {
    const NAME: &'static str = "GstOnnxTransform";
    type Type = super::OnnxTransform;
    type ParentType = gst::Element;

    fn with_class(klass: &Self::Class) -> Self {
        let sinkpad = gst::Pad::builder_from_template(&klass.pad_template("sink").unwrap())
            .chain_function(|pad, parent, buffer| {
                OnnxTransform::catch_panic_pad_function(
                    parent,
                    || Err(gst::FlowError::Error),
                    |imp| imp.sink_chain(pad, buffer),
                )
            })
            .event_function(|pad, parent, event| {
                OnnxTransform::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.sink_event(pad, event),
                )
            })
            .query_function(|pad, parent, query| {
                OnnxTransform::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.sink_query(pad, query),
                )
            })
            .activatemode_function(|_pad, parent, mode, active| {
                OnnxTransform::catch_panic_pad_function(
                    parent,
                    || Err(gst::loggable_error!(CAT, "Panic activating the sink pad")),
                    |imp| imp.sink_activatemode(mode, active),
                )
            })
            .build();
        let srcpad = gst::Pad::builder_from_template(&klass.pad_template("src").unwrap())
            .query_function(|pad, parent, query| {
                OnnxTransform::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.src_query(pad, query),
                )
            })
            .activatemode_function(|_pad, parent, mode, active| {
                OnnxTransform::catch_panic_pad_function(
                    parent,
                    || Err(gst::loggable_error!(CAT, "Panic activating the src pad")),
                    |imp| imp.src_activatemode(mode, active),
                )
            })
            .build();
        OnnxTransform {
            sinkpad,
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

impl OnnxTransform {
    /// Refuses a setting: the old value stays, the user learns why on the bus.
    fn refuse(&self, what: &str) {
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

    fn output_caps(&self, fps: Option<gst::Fraction>, size: Option<(u32, u32)>) -> gst::Caps {
        let size = size.or(self.input.lock().unwrap().sizes.map(|s| s.1));
        let range = gst::IntRange::new(1, MAX_SIZE as i32 * 8);
        let b = gst::Caps::builder("video/x-raw")
            .field("format", gst::List::new(SRC_FORMATS))
            .field("pixel-aspect-ratio", gst::Fraction::new(1, 1));
        let b = match size {
            Some((w, h)) => b.field("width", w as i32).field("height", h as i32),
            None => b.field("width", range).field("height", range),
        };
        match fps {
            Some(fps) => b.field("framerate", fps).build(),
            None => b
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

    pub(super) fn negotiate_output(
        &self,
        fps: gst::Fraction,
        size: (u32, u32),
    ) -> Result<(gst::Caps, gst_video::VideoInfo), String> {
        let ours = self.output_caps(Some(fps), Some(size));
        let peer = self.srcpad.peer_query_caps(None);
        let mut caps = peer.intersect_with_mode(&ours, gst::CapsIntersectMode::First);
        if caps.is_empty() {
            return Err(format!(
                "downstream accepts none of {ours}; it accepts {peer}. Add videoconvert/videoscale after onnxtransform"
            ));
        }
        caps.fixate();
        let info = gst_video::VideoInfo::from_caps(&caps)
            .map_err(|e| format!("cannot use output caps {caps}: {e}"))?;
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
        let started = Instant::now();
        let frame = {
            let mut input = self.input.lock().unwrap();
            let (Some(conv), Some(pre)) = (input.converter.as_ref(), input.preprocess.as_ref())
            else {
                gst::element_imp_error!(
                    self,
                    gst::CoreError::Negotiation,
                    ["Received a video buffer before any caps"]
                );
                return Err(gst::FlowError::NotNegotiated);
            };
            let (w, h) = conv.model_size();
            let rgb = match conv.convert(buffer.as_ref()) {
                Ok(rgb) => rgb,
                Err(e) => {
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
            let data = pre.run(&rgb, w as usize, h as usize);
            let mut meta = gst::Buffer::new();
            {
                let meta = meta.get_mut().expect("new buffer is writable");
                if let Err(e) = buffer.copy_into(meta, METADATA_COPY, ..) {
                    gst::warning!(CAT, imp = self, "cannot copy the input's metadata: {e}");
                }
                // Metas tied to the input picture do not describe the output.
                meta.foreach_meta_mut(|m| {
                    let action = if m.tags().is_empty() {
                        gst::buffer::BufferMetaForeachAction::Keep
                    } else {
                        gst::buffer::BufferMetaForeachAction::Remove
                    };
                    std::ops::ControlFlow::Continue(action)
                });
            }
            let tag = input.next_tag;
            input.next_tag += 1;
            QueuedFrame {
                data,
                width: w as usize,
                height: h as usize,
                meta,
                running_time: input.segment.to_running_time(buffer.pts()),
                index: Some(buffer.offset())
                    .filter(|&o| o != gst::ffi::GST_BUFFER_OFFSET_NONE)
                    .unwrap_or(tag),
            }
        };
        let took = started.elapsed();
        let dropping = self.drops_frames(&self.settings.lock().unwrap());
        if dropping {
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
        let mut s = self.stats.lock().unwrap();
        s.frames_in += 1;
        s.input_work += took;
        Ok(gst::FlowSuccess::Ok)
    }

    fn drops_frames(&self, s: &Settings) -> bool {
        match s.drop_frames {
            DropFrames::Never => false,
            DropFrames::Always => true,
            DropFrames::Auto => self.input.lock().unwrap().upstream_live,
        }
    }

    /// Counts a frame dropped to keep latency bounded and posts a QoS message for it.
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
                let ret = self.srcpad.push_event(event);
                if let Err(e) = self.srcpad.pause_task() {
                    gst::warning!(CAT, imp = self, "cannot pause the task: {e}");
                }
                let mut o = self.out_queue.lock();
                while o.busy {
                    o = self.out_queue.wait(o);
                }
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
            ((w, h), s.resize_mode)
        };
        let (model_size, out_size, pre) = {
            let mut guard = self.worker.lock().unwrap();
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
        let mut latency = gst::query::Latency::new();
        let upstream_live = self.sinkpad.peer_query(&mut latency) && latency.result().0;
        let (out_caps, out_info) = self.negotiate_output(in_info.fps(), out_size)?;
        gst::info!(
            CAT,
            imp = self,
            "input {caps} -> model {}x{} -> output {out_caps}",
            model_size.0,
            model_size.1
        );
        let mut input = self.input.lock().unwrap();
        input.converter = Some(conv);
        input.preprocess = Some(pre);
        input.upstream_live = upstream_live;
        input.sizes = Some((model_size, out_size));
        Ok(Deferred::Caps(gst::event::Caps::new(&out_caps), out_info))
    }

    pub(super) fn set_flushing(&self, flushing: bool) {
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

    /// After FLUSH_START paused the task and the output thread: drops every frame queued
    /// or in a partial batch and lets the stream start again.
    fn flush_stop(&self, event: gst::Event) -> bool {
        let mut keep = Vec::new();
        let mut dropped = 0;
        for item in self.out_queue.lock().drain() {
            match item {
                OutItem::Frame(..) => dropped += 1,
                OutItem::Event(d) => keep.push(d),
                OutItem::Eos(_) | OutItem::Drained(_) => (),
            }
        }
        if let Some(w) = self.worker.lock().unwrap().as_mut() {
            dropped += w.batch.len();
            w.batch.clear();
            keep.append(&mut w.deferred);
        }
        for item in self.queue.lock().drain() {
            match item {
                Item::Frame(_) => dropped += 1,
                Item::Event(d) => keep.push(d),
                Item::Eos(_) | Item::Drain(_) => (),
            }
        }
        gst::debug!(CAT, imp = self, "flush: dropped {dropped} frames");
        self.stats.lock().unwrap().frames_dropped += dropped as u64;
        let ret = self.srcpad.push_event(event);
        // Sticky events that had not left yet still describe the stream; the old segment
        // does not.
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
                if !self.drain_and_wait() {
                    return false;
                }
                gst::Pad::query_default(pad, Some(&*self.obj()), query)
            }
            QueryViewMut::Allocation(q) => {
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
                .name("onnx-output".into())
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
                let dropping = self.drops_frames(&self.settings.lock().unwrap());
                let (ours, queue) = {
                    let s = self.settings.lock().unwrap();
                    let mut stats = self.stats.lock().unwrap();
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
                    let b = s.batch_size as usize;
                    (
                        added_latency(0, b, frame, inference, dropping)
                            + stats.conversion_estimate(),
                        queue,
                    )
                };
                gst::debug!(CAT, imp = self, "latency: upstream {min}, adding {ours}");
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
                [
                    "Set the model property to an .onnx file with one image input and one image output"
                ]
            );
            return Err(gst::StateChangeError);
        };
        let intra_threads = if s.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            s.threads as usize
        };
        let opts = ModelOptions {
            file: PathBuf::from(&model),
            execution_provider: s.execution_provider.into(),
            device_id: s.device_id,
            fp16: s.fp16,
            engine_cache_dir: s.engine_cache_dir.clone().map(Into::into),
            intra_threads,
            overrides: s.overrides.clone(),
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
        let provider = provider_name(m.provider);
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
        let _ = self.obj().post_message(
            gst::message::Element::builder(started_msg)
                .src(&*self.obj())
                .build(),
        );
        {
            let mut st = self.stats.lock().unwrap();
            *st = Stats::default();
            st.provider = Some(provider);
            st.batch_size = s.batch_size as usize;
            st.last_posted = Some(Instant::now());
        }
        *self.input.lock().unwrap() = InputState::default();
        {
            let mut q = self.queue.lock();
            q.drain();
            q.max_frames = s.max_queue as usize;
        }
        self.out_queue.lock().max_frames = 2 * s.batch_size as usize;
        *self.out_state.lock().unwrap() = OutState {
            conv: None,
            post: Some(m.postprocess()),
        };
        *self.worker.lock().unwrap() = Some(Worker::new(m, s.batch_size as usize));
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

    /// Posts the `stats` structure when `stats-interval` has passed, or always with `force`.
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

    fn stats_structure(&self) -> gst::Structure {
        let queued = self.queue.lock().frames() as u32;
        let s = self.stats.lock().unwrap();
        let ms = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        gst::Structure::builder("onnxtransform-stats")
            .field("frames-in", s.frames_in)
            .field("frames-out", s.frames_out)
            .field("frames-dropped", s.frames_dropped)
            .field("frames-late", s.frames_late)
            .field("frames-invalid", s.frames_invalid)
            .field("batches", s.batches)
            .field("avg-inference-ms", ms(s.inference_estimate()))
            .field("first-inference-ms", ms(s.first_inference))
            .field("queued", queued)
            .field("provider", s.provider.unwrap_or(""))
            .build()
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
                    .blurb("Half precision where the provider supports it (TensorRT)")
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
                glib::ParamSpecEnum::builder_with_default("resize-mode", ResizeMode::Stretch)
                    .nick("Resize mode")
                    .blurb("How the input fills the model size: stretch, crop or fit")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("drop-frames", DropFrames::Auto)
                    .nick("Drop frames")
                    .blurb("When frames come faster than inference: drop the oldest waiting frame so latency stays bounded (counted in stats frames-late, posted as QoS messages), or keep every frame and make upstream wait. auto drops on live sources only")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("threads")
                    .nick("Threads")
                    .blurb("ONNX Runtime intra-op threads; 0 = the CPUs this process may use")
                    .maximum(1024)
                    .default_value(DEFAULT_THREADS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("stats-interval")
                    .nick("Stats interval")
                    .blurb("Milliseconds between onnxtransform-stats element messages, also posted at EOS; 0 = only at EOS")
                    .maximum(3_600_000)
                    .default_value(DEFAULT_STATS_INTERVAL_MS)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("frames-in, frames-out, frames-dropped (flush), frames-late (dropped to keep up with live input), frames-invalid, batches, avg-inference-ms, first-inference-ms, queued, provider")
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
            "resize-mode" => s.resize_mode = value.get().unwrap(),
            "drop-frames" => {
                s.drop_frames = value.get().unwrap();
                drop(s);
                self.queue.notify();
            }
            "threads" => s.threads = value.get().unwrap(),
            "stats-interval" => s.stats_interval_ms = value.get().unwrap(),
            _ => unreachable!("property {name} is not registered"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = self.settings.lock().unwrap();
        let o = &s.overrides;
        match pspec.name() {
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
            "execution-provider" => s.execution_provider.to_value(),
            "device-id" => s.device_id.to_value(),
            "fp16" => s.fp16.to_value(),
            "engine-cache-dir" => s.engine_cache_dir.to_value(),
            "max-queue" => s.max_queue.to_value(),
            "resize-mode" => s.resize_mode.to_value(),
            "drop-frames" => s.drop_frames.to_value(),
            "threads" => s.threads.to_value(),
            "stats-interval" => s.stats_interval_ms.to_value(),
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
        obj.add_pad(&self.srcpad).unwrap();
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
            let range = gst::IntRange::new(1, i32::MAX);
            let fps =
                gst::FractionRange::new(gst::Fraction::new(0, 1), gst::Fraction::new(i32::MAX, 1));
            let caps = |formats: &[&str]| {
                gst::Caps::builder("video/x-raw")
                    .field("format", gst::List::new(formats.iter().copied()))
                    .field("width", range)
                    .field("height", range)
                    .field("framerate", fps)
                    .build()
            };
            vec![
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &caps(&SINK_FORMATS),
                )
                .unwrap(),
                gst::PadTemplate::new(
                    "src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &caps(&SRC_FORMATS),
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
