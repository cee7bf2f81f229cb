// SPDX-License-Identifier: MPL-2.0
//! The base of an inference element (`i2itransform`, `onnxtransform`, `i2idecode`): one
//! sink pad, one src pad of raw video, and three threads.
//!
//! The upstream streaming thread reads each frame into what the element's model takes
//! ([`InferElement::read_frame`]; raw video is converted to RGB8 at the model size first)
//! and queues it (blocking while `max-queue` frames wait, or dropping the oldest on live
//! input); the src pad's task ([`super::task`]) collects batches and only runs the model;
//! an output thread ([`super::output`]) turns the model's pictures into buffers of the
//! output format and pushes them, so that this work overlaps the next model call.
//! Serialized events travel through the same queues and leave after the output of the last
//! frame that came before them, so the stream keeps its order although the model holds
//! frames back.
//!
//! [`InferBase`] holds the state all of that shares; [`InferElement`] is what an element
//! supplies (its model, its formats, its properties); [`InferStats`] its stats. The pad,
//! event, query and state handling built on them, which the element's pads call, is
//! [`super::pads`].

use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use gst::prelude::*;
use gst::subclass::prelude::*;

use super::convert::OutputConverter;
use super::input::{Deferred, InputState, Item, Queued};
use super::props::{DEFAULT_MAX_QUEUE, StreamSettings};
use super::queue::{BoundedQueue, QueueItem};
use super::stats::Stats;

/// The stats fields renamed for the one vocabulary, (old, new): still filled under the old
/// names for one release (docs/properties.md).
const RENAMED_STATS: &[(&str, &str)] = &[
    ("frames-dropped", "dropped-flush"),
    ("frames-late", "dropped-late"),
    ("frames-invalid", "dropped-invalid"),
];

/// The state every inference element keeps, shared between its threads.
pub struct InferBase<T: InferElement> {
    pub sinkpad: gst::Pad,
    pub srcpad: gst::Pad,
    pub input: Mutex<InputState>,
    /// Streaming thread to task: prepared frames and serialized events.
    pub queue: BoundedQueue<Item<T::Data>>,
    /// The task's side: the model and what is in flight. Exists from start to stop.
    pub worker: Mutex<Option<T::Worker>>,
    /// Task to output thread: finished pictures and the events between them.
    pub out_queue: BoundedQueue<OutItem<T::Picture>>,
    /// The negotiated output format (output thread side).
    pub out_conv: Mutex<Option<OutputConverter>>,
    pub(super) out_thread: Mutex<Option<JoinHandle<()>>>,
    pub stats: Mutex<Stats<T::StatsExtra>>,
    /// True from start to stop: the load-time properties are fixed meanwhile.
    pub running: AtomicBool,
}

impl<T: InferElement> InferBase<T> {
    /// The base with the element's video sink pad and src pad (see [`sink_pad_builder`]
    /// and [`src_pad_builder`]).
    pub fn new(sinkpad: gst::Pad, srcpad: gst::Pad) -> Self {
        InferBase {
            sinkpad,
            srcpad,
            input: Mutex::new(InputState::default()),
            // Bounded by `max-queue` at start ([`InferElementExt::reset_for_start`]).
            queue: BoundedQueue::new(DEFAULT_MAX_QUEUE as usize),
            worker: Mutex::new(None),
            out_queue: BoundedQueue::new(2),
            out_conv: Mutex::new(None),
            out_thread: Mutex::new(None),
            stats: Mutex::new(Stats::default()),
            running: AtomicBool::new(false),
        }
    }
}

/// What the LATENCY answer needs from the element's settings.
pub struct LatencySettings {
    /// Frames the model holds back before the first load (after it, the loaded model's).
    pub latency_frames: usize,
    pub batch_size: usize,
}

/// What an inference element supplies: its model, its formats and its properties.
pub trait InferElement: ElementImpl<Type: Send + Sync> {
    /// A frame prepared for the model on the streaming thread.
    type Data: Send + 'static;
    /// A picture the model gave, rendered on the output thread.
    type Picture: Send + 'static;
    /// The task's side: the model and what is in flight. Exists from start to stop.
    type Worker: Send;
    /// What only this element counts in its stats.
    type StatsExtra: Default + Send;

    /// Name of the output thread.
    const OUTPUT_THREAD: &'static str;
    /// Name of the stats structure (`<element>-stats`).
    const STATS_NAME: &'static str;

    fn cat() -> gst::DebugCategory;
    fn base(&self) -> &InferBase<Self>;

    fn sinkpad(&self) -> &gst::Pad {
        &self.base().sinkpad
    }

    fn srcpad(&self) -> &gst::Pad {
        &self.base().srcpad
    }

    fn worker(&self) -> &Mutex<Option<Self::Worker>> {
        &self.base().worker
    }

    // ---- settings

    /// The queue, drop policy and stats interval in force (`drop-frames`,
    /// `stats-interval`, ...).
    fn stream_settings(&self) -> StreamSettings;

    // ---- state

    /// READY to PAUSED: loads the model, posts what runs (`<element>-started`), readies
    /// the base ([`InferElementExt::reset_for_start`]) and the worker.
    fn load(&self) -> Result<(), gst::StateChangeError>;
    /// PAUSED to READY, after the base dropped the worker and the stream's state: drops
    /// what else the element kept of the model.
    fn unload(&self) {}

    fn latency_settings(&self) -> LatencySettings;
    /// Adds the element's own fields to its stats structure.
    fn stats_fields(
        &self,
        b: gst::structure::Builder,
        s: &Stats<Self::StatsExtra>,
    ) -> gst::structure::Builder {
        let _ = s;
        b
    }

    // ---- streaming thread

    /// New input caps: sets up the input conversion (`base().input`) and gives the output
    /// caps event for the output thread.
    fn set_sink_caps(&self, caps: &gst::CapsRef) -> Result<Deferred, String>;
    /// Reads an input buffer into the model's input (raw video: with
    /// [`InferElementExt::convert_video`] first); None when the frame is dropped (the
    /// element counts and reports it).
    fn read_frame(
        &self,
        buffer: &gst::BufferRef,
        input: &InputState,
        tag: u64,
        running_time: Option<gst::ClockTime>,
    ) -> Result<Option<Self::Data>, gst::FlowError>;

    // ---- caps

    /// Every output the element can produce, in its preference order; `size`: the model
    /// size these caps are for, None: the current input's.
    fn output_caps(&self, fps: Option<gst::Fraction>, size: Option<(u32, u32)>) -> gst::Caps;
    /// Output caps by downstream's preference, and the output format they describe.
    fn negotiate_output(
        &self,
        fps: gst::Fraction,
        size: (u32, u32),
    ) -> Result<(gst::Caps, gst_video::VideoInfo), String>;

    // ---- task

    /// Whether the worker holds frames back (the task then finishes them when input stalls).
    fn holds_frames(w: &Self::Worker) -> bool;
    /// A frame for the worker's batch.
    fn task_frame(&self, w: &mut Self::Worker, f: Queued<Self::Data>)
    -> Result<(), gst::FlowError>;
    /// An event: it leaves after the frames taken before it.
    fn task_event(&self, w: &mut Self::Worker, d: Deferred) -> Result<(), gst::FlowError>;
    /// Every frame held back comes out, then the events that waited for them.
    fn task_drain(&self, w: &mut Self::Worker) -> Result<(), gst::FlowError>;
    /// A flush: forgets the frames held back (their number) and gives back the events
    /// that waited for them.
    fn flush_worker(&self, w: &mut Self::Worker) -> (usize, Vec<Deferred>);
    /// Caps that had not reached the task before a flush, now the stream's; false when the
    /// element cannot go on with them.
    fn flushed_caps(&self, info: &gst_video::VideoInfo) -> bool {
        let _ = info;
        true
    }

    // ---- output thread

    /// Renders a model picture for the output format of `conv`.
    fn render(
        &self,
        pic: &Self::Picture,
        conv: &OutputConverter,
    ) -> Result<Rendered, gst::FlowError>;
    /// Counts what the element's stats say about a picture that went out.
    fn count_pushed(pic: &Self::Picture, extra: &mut Self::StatsExtra) {
        let _ = (pic, extra);
    }
}

/// Raw video of `formats` at any size and rate: the element's pad templates.
pub fn video_template_caps(formats: &[&str]) -> gst::Caps {
    let range = gst::IntRange::new(1, i32::MAX);
    let fps = gst::FractionRange::new(gst::Fraction::new(0, 1), gst::Fraction::new(i32::MAX, 1));
    gst::Caps::builder("video/x-raw")
        .field("format", gst::List::new(formats.iter().copied()))
        .field("width", range)
        .field("height", range)
        .field("framerate", fps)
        .build()
}

/// `builder` (raw video caps) at frame rate `fps`, or at any rate when it is not known yet.
pub fn with_framerate(
    builder: gst::caps::Builder<gst::caps::NoFeature>,
    fps: Option<gst::Fraction>,
) -> gst::Caps {
    let fps = match fps {
        Some(fps) => fps.to_send_value(),
        None => gst::FractionRange::new(gst::Fraction::new(0, 1), gst::Fraction::new(i32::MAX, 1))
            .to_send_value(),
    };
    builder.field("framerate", fps).build()
}

/// What the task hands to the output thread, in stream order.
pub enum OutItem<P> {
    /// A model picture and the metadata of its input frame.
    Frame(P, gst::Buffer),
    Event(Deferred),
    Eos(gst::Event),
    /// Everything before it has been pushed: answers a DRAIN query.
    Drained(mpsc::Sender<()>),
}

impl<P> QueueItem for OutItem<P> {
    fn is_frame(&self) -> bool {
        matches!(self, OutItem::Frame(..))
    }
}

/// A picture as the element renders it for the output.
pub enum Rendered {
    /// RGB8 at the output size, converted here to the negotiated format.
    Rgb(Vec<u8>),
    /// Pushed as it is (latents).
    Buffer(gst::Buffer),
}

/// The stats of an inference element: its `stats` property and messages, and what it
/// posts when it starts; implemented for every [`InferElement`].
pub trait InferStats: InferElement {
    /// Posts the stats structure as an element message when `stats-interval` has passed
    /// since the last one, or always with `force` (at EOS).
    fn post_stats(&self, force: bool) {
        let interval = self.stream_settings().stats_interval_ms;
        if !self.base().stats.lock().unwrap().post_due(interval, force) {
            return;
        }
        let obj = self.obj();
        let msg = gst::message::Element::builder(self.stats_structure())
            .src(&*obj)
            .build();
        let _ = obj.post_message(msg);
    }

    /// The `stats` property and message.
    fn stats_structure(&self) -> gst::Structure {
        let base = self.base();
        let queued = base.queue.lock().frames() as u32;
        let s = base.stats.lock().unwrap();
        let ms = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        let b = gst::Structure::builder(Self::STATS_NAME)
            .field("frames-in", s.frames_in)
            .field("frames-out", s.frames_out)
            .field("dropped", s.dropped())
            .field("dropped-flush", s.frames_dropped)
            .field("dropped-late", s.frames_late)
            .field("dropped-invalid", s.frames_invalid)
            .field("batches", s.batches)
            .field("avg-inference-ms", ms(s.inference_estimate()))
            .field("first-inference-ms", ms(s.first_inference))
            .field("queued", queued)
            .field("provider", s.provider.unwrap_or(""));
        let mut st = self.stats_fields(b, &s).build();
        i2i_compat::with_old_fields(&mut st, RENAMED_STATS);
        st
    }

    /// Posts what runs, for gst-launch-1.0 -m and applications: the `<element>-started`
    /// structure.
    fn post_started(&self, s: gst::Structure) {
        let obj = self.obj();
        let _ = obj.post_message(gst::message::Element::builder(s).src(&*obj).build());
    }
}

impl<T: InferElement> InferStats for T {}
