// SPDX-License-Identifier: MPL-2.0
//! The pads of an inference element and what they call: activation, the sink pad's chain,
//! events and queries, the src pad's queries, the state changes and the property helpers,
//! built on what the element supplies ([`InferElement`]) and on the task and output
//! threads ([`InferTask`], [`InferOutput`]).

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::convert::{InputConverter, OutputConverter, converter_threads};
use super::element::{InferElement, InferStats, OutItem};
use super::input::{
    DROPPING_QUEUE_FRAMES, Deferred, InputState, Item, Queued, RgbFrame, frame_meta,
};
use super::latency::added_latency;
use super::output::InferOutput;
use super::props::StreamSettings;
use super::stats::Stats;
use super::task::InferTask;

/// The pad functions both pads of an inference element have: activation (the base's for
/// the pad's direction) and the internal link to the other pad.
fn base_pad_builder<T: InferElement>(templ: &gst::PadTemplate) -> gst::PadBuilder<gst::Pad> {
    let sink = templ.direction() == gst::PadDirection::Sink;
    gst::Pad::builder_from_template(templ)
        .activatemode_function(move |_pad, parent, mode, active| {
            T::catch_panic_pad_function(
                parent,
                || {
                    Err(gst::loggable_error!(
                        T::cat(),
                        "Panic activating the {} pad",
                        if sink { "sink" } else { "src" }
                    ))
                },
                |imp| {
                    if sink {
                        imp.sink_activatemode(mode, active)
                    } else {
                        imp.src_activatemode(mode, active)
                    }
                },
            )
        })
        .iterate_internal_links_function(move |_pad, parent| {
            T::catch_panic_pad_function(
                parent,
                || gst::Iterator::from_vec(vec![]),
                |imp| {
                    let other = if sink { imp.srcpad() } else { imp.sinkpad() };
                    gst::Iterator::from_vec(vec![other.clone()])
                },
            )
        })
}

/// The video sink pad of an inference element, its functions those of the base; linked
/// internally to the src pad only.
pub fn sink_pad_builder<T: InferElement>(templ: &gst::PadTemplate) -> gst::PadBuilder<gst::Pad> {
    base_pad_builder::<T>(templ)
        .chain_function(|_pad, parent, buffer| {
            T::catch_panic_pad_function(
                parent,
                || Err(gst::FlowError::Error),
                |imp| imp.sink_chain(buffer),
            )
        })
        .event_function(|pad, parent, event| {
            T::catch_panic_pad_function(parent, || false, |imp| imp.sink_event(pad, event))
        })
        .query_function(|pad, parent, query| {
            T::catch_panic_pad_function(parent, || false, |imp| imp.sink_query(pad, query))
        })
}

/// The src pad of an inference element, its functions those of the base; linked
/// internally to the video sink pad only.
pub fn src_pad_builder<T: InferElement>(templ: &gst::PadTemplate) -> gst::PadBuilder<gst::Pad> {
    base_pad_builder::<T>(templ).query_function(|pad, parent, query| {
        T::catch_panic_pad_function(parent, || false, |imp| imp.src_query(pad, query))
    })
}

/// The pads, events, queries and state of an inference element; implemented for every
/// [`InferElement`].
pub trait InferElementExt: InferElement {
    // ---- sink pad -------------------------------------------------------------------

    fn sink_activatemode(
        &self,
        mode: gst::PadMode,
        active: bool,
    ) -> Result<(), gst::LoggableError> {
        if mode != gst::PadMode::Push {
            return Err(gst::loggable_error!(
                Self::cat(),
                "the sink pad works in push mode only"
            ));
        }
        let queue = &self.base().queue;
        let mut q = queue.lock();
        q.flushing = !active;
        if active {
            q.flow = Ok(gst::FlowSuccess::Ok);
        }
        queue.notify();
        Ok(())
    }

    fn sink_chain(&self, buffer: gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        let base = self.base();
        {
            let q = base.queue.lock();
            if q.flushing {
                return Err(gst::FlowError::Flushing);
            }
            q.flow?;
        }
        let started = Instant::now();
        let frame = {
            let mut input = base.input.lock().unwrap();
            let tag = input.next_tag;
            let running_time = input.segment.to_running_time(buffer.pts());
            let Some(data) = self.read_frame(&buffer, &input, tag, running_time)? else {
                return Ok(gst::FlowSuccess::Ok);
            };
            let (meta, copied) = frame_meta(&buffer);
            if let Err(e) = copied {
                gst::warning!(
                    Self::cat(),
                    imp = self,
                    "cannot copy the input's metadata: {e}"
                );
            }
            input.next_tag += 1;
            Queued {
                tag,
                data,
                meta,
                running_time,
                index: Some(buffer.offset())
                    .filter(|&o| o != gst::ffi::GST_BUFFER_OFFSET_NONE)
                    .unwrap_or(tag),
            }
        };
        // Conversion and the model's preprocessing: the streaming thread's work.
        let took = started.elapsed();
        self.queue_frame(frame)?;
        let mut s = base.stats.lock().unwrap();
        s.frames_in += 1;
        s.input_work += took;
        Ok(gst::FlowSuccess::Ok)
    }

    /// Our output caps for `fps` and `size` as downstream prefers them, fixated (for
    /// [`InferElement::negotiate_output`]); the error names both sides and `hint`.
    fn downstream_caps(
        &self,
        fps: gst::Fraction,
        size: (u32, u32),
        hint: &str,
    ) -> Result<gst::Caps, String> {
        let ours = self.output_caps(Some(fps), Some(size));
        let peer = self.base().srcpad.peer_query_caps(None);
        let mut caps = peer.intersect_with_mode(&ours, gst::CapsIntersectMode::First);
        if caps.is_empty() {
            return Err(format!(
                "downstream accepts none of {ours}; it accepts {peer}{hint}"
            ));
        }
        caps.fixate();
        Ok(caps)
    }

    /// Raw video input: the frame as RGB8 at the model size; None for a
    /// frame that cannot be read (counted, with a warning: the stream goes on).
    fn convert_video(
        &self,
        buffer: &gst::BufferRef,
        input: &InputState,
    ) -> Result<Option<RgbFrame>, gst::FlowError> {
        let Some(conv) = input.converter.as_ref() else {
            gst::element_imp_error!(
                self,
                gst::CoreError::Negotiation,
                ["Received a video buffer before any caps"]
            );
            return Err(gst::FlowError::NotNegotiated);
        };
        match conv.convert(buffer) {
            Ok(rgb) => {
                let (width, height) = conv.model_size();
                Ok(Some(RgbFrame { rgb, width, height }))
            }
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
                self.base().stats.lock().unwrap().frames_invalid += 1;
                Ok(None)
            }
        }
    }

    /// Whether frames that inference cannot keep up with are dropped now.
    fn drops_frames(&self) -> bool {
        let policy = self.stream_settings().drop_frames;
        policy.drops(self.base().input.lock().unwrap().upstream_live)
    }

    /// Queues a prepared frame for the task. Dropping (live input faster than inference),
    /// the oldest waiting frames leave so that the newest only waits, each counted as late;
    /// otherwise the streaming thread waits while the queue is full. Refused while
    /// flushing or after a flow error of the stream.
    fn queue_frame(&self, frame: Queued<Self::Data>) -> Result<(), gst::FlowError> {
        let queue = &self.base().queue;
        if !self.drops_frames() {
            return queue.push_wait(Item::Frame(frame), |q| {
                if q.flushing {
                    return Err(gst::FlowError::Flushing);
                }
                q.flow.map(|_| ())
            });
        }
        let late = {
            let mut q = queue.lock();
            if q.flushing {
                return Err(gst::FlowError::Flushing);
            }
            q.flow?;
            let late = q.push_dropping_oldest(Item::Frame(frame), DROPPING_QUEUE_FRAMES);
            queue.notify();
            late
        };
        for item in late {
            if let Item::Frame(f) = item {
                self.dropped_late(&f);
            }
        }
        Ok(())
    }

    /// Counts a frame dropped to keep latency bounded and posts a QoS message for it,
    /// as video decoders and sinks do for the frames they drop.
    fn dropped_late(&self, f: &Queued<Self::Data>) {
        let base = self.base();
        let (processed, dropped) = {
            let mut s = base.stats.lock().unwrap();
            s.frames_late += 1;
            (s.frames_in, s.frames_late)
        };
        let pts = f.meta.pts();
        let stream_time = pts.and_then(|t| base.input.lock().unwrap().segment.to_stream_time(t));
        gst::debug!(
            Self::cat(),
            imp = self,
            "inference behind live input: dropping frame {} (pts {pts:?})",
            f.index
        );
        let obj = self.obj();
        let msg = gst::message::Qos::builder(true)
            .running_time(f.running_time)
            .stream_time(stream_time)
            .timestamp(pts)
            .duration(f.meta.duration())
            .stats(
                gst::format::Buffers::from_u64(processed),
                gst::format::Buffers::from_u64(dropped),
            )
            .src(&*obj)
            .build();
        let _ = obj.post_message(msg);
    }

    /// Queues an event for the task unless flushing; false when refused.
    fn enqueue(&self, item: Item<Self::Data>) -> bool {
        self.base().queue.push_unless_flushing(item)
    }

    fn sink_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        use gst::EventView;
        gst::log!(Self::cat(), obj = pad, "event {event:?}");
        match event.view() {
            EventView::FlushStart(_) => {
                self.set_flushing(true);
                // Downstream first, so that a push in progress returns.
                let ret = self.srcpad().push_event(event);
                if let Err(e) = self.srcpad().pause_task() {
                    gst::warning!(Self::cat(), imp = self, "cannot pause the task: {e}");
                }
                // The output thread is done with the item it is pushing (if any).
                self.base().out_queue.wait_idle();
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
                    Some(seg) => self.base().input.lock().unwrap().segment = seg.clone(),
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
            _ => self.srcpad().push_event(event),
        }
    }

    /// Whether the source upstream is live (asked when caps arrive).
    fn query_upstream_live(&self) -> bool {
        let mut latency = gst::query::Latency::new();
        self.sinkpad().peer_query(&mut latency) && latency.result().0
    }

    /// Input caps accepted: the conversion to the model size (raw video), the frame rate,
    /// and whether upstream is live.
    fn set_input(&self, conv: Option<InputConverter>, fps: gst::Fraction, upstream_live: bool) {
        let mut input = self.base().input.lock().unwrap();
        input.converter = conv;
        input.fps = Some(fps);
        input.upstream_live = upstream_live;
    }

    /// Stops (or lets) the task and the output thread take items and the chain queue them.
    fn set_flushing(&self, flushing: bool) {
        let base = self.base();
        {
            let mut q = base.queue.lock();
            q.flushing = flushing;
            if !flushing {
                q.flow = Ok(gst::FlowSuccess::Ok);
            }
            base.queue.notify();
        }
        let mut o = base.out_queue.lock();
        o.flushing = flushing;
        base.out_queue.notify();
    }

    /// After FLUSH_START paused the task and the output thread: drops every frame queued
    /// or held back and lets the stream start again.
    fn flush_stop(&self, event: gst::Event) -> bool {
        let base = self.base();
        // Oldest first: handed to the output thread, then held by the worker, then not
        // taken from the input queue yet.
        let mut keep = Vec::new();
        let mut dropped = 0;
        let out_items = base.out_queue.lock().drain();
        for item in out_items {
            match item {
                OutItem::Frame(..) => dropped += 1,
                OutItem::Event(d) => keep.push(d),
                OutItem::Eos(_) | OutItem::Drained(_) => (),
            }
        }
        if let Some(w) = self.worker().lock().unwrap().as_mut() {
            let (n, events) = self.flush_worker(w);
            dropped += n;
            keep.extend(events);
        }
        let items = base.queue.lock().drain();
        for item in items {
            match item {
                Item::Frame(_) => dropped += 1,
                Item::Event(d) => keep.push(d),
                Item::Eos(_) | Item::Drain(_) => (),
            }
        }
        gst::debug!(Self::cat(), imp = self, "flush: dropped {dropped} frames");
        base.stats.lock().unwrap().frames_dropped += dropped as u64;

        let srcpad = self.srcpad();
        let ret = srcpad.push_event(event);
        // Sticky events that had not left yet (caps, stream-start, tags) still describe
        // the stream after the flush; the old segment does not.
        for d in keep {
            match d {
                Deferred::Caps(ev, info) => {
                    let _ = srcpad.store_sticky_event(&ev);
                    match OutputConverter::new(&info, converter_threads()) {
                        Ok(c) => *base.out_conv.lock().unwrap() = Some(c),
                        Err(e) => gst::warning!(Self::cat(), imp = self, "{e}"),
                    }
                    if !self.flushed_caps(&info) {
                        return false;
                    }
                }
                Deferred::Event(ev) => {
                    if ev.is_sticky()
                        && ev.type_() != gst::EventType::Segment
                        && ev.type_() != gst::EventType::Eos
                    {
                        let _ = srcpad.store_sticky_event(&ev);
                    }
                }
            }
        }
        self.set_flushing(false);
        if srcpad.mode() == gst::PadMode::Push
            && let Err(e) = self.start_task()
        {
            gst::error!(Self::cat(), imp = self, "cannot restart the task: {e}");
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
                // (a worker finishing its jobs, a decoder reconfiguring): the frames held
                // back come out first.
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
                    let q = self.base().queue.lock();
                    if q.flushing || q.flow.is_err() {
                        return false;
                    }
                }
            }
        }
    }

    // ---- src pad ----------------------------------------------------------------------

    fn src_activatemode(&self, mode: gst::PadMode, active: bool) -> Result<(), gst::LoggableError> {
        let cat = Self::cat();
        if mode != gst::PadMode::Push {
            return Err(gst::loggable_error!(
                cat,
                "the src pad works in push mode only"
            ));
        }
        let base = self.base();
        if active {
            {
                let mut o = base.out_queue.lock();
                o.drain();
                o.flushing = false;
                o.stop = false;
                o.busy = false;
            }
            let obj = self.obj().clone();
            let thread = std::thread::Builder::new()
                .name(Self::OUTPUT_THREAD.into())
                .spawn(move || obj.imp().output_loop())
                .map_err(|e| gst::loggable_error!(cat, "cannot start the output thread: {e}"))?;
            *base.out_thread.lock().unwrap() = Some(thread);
            {
                let mut q = base.queue.lock();
                q.flushing = false;
                q.flow = Ok(gst::FlowSuccess::Ok);
            }
            self.start_task()
                .map_err(|e| gst::loggable_error!(cat, "cannot start the task: {e}"))
        } else {
            self.set_flushing(true);
            {
                let mut o = base.out_queue.lock();
                o.stop = true;
                base.out_queue.notify();
            }
            let stopped = self.srcpad().stop_task();
            if let Some(thread) = base.out_thread.lock().unwrap().take() {
                let _ = thread.join();
            }
            base.out_queue.lock().drain();
            stopped.map_err(|e| gst::loggable_error!(cat, "cannot stop the task: {e}"))
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
                if !self.sinkpad().peer_query(&mut peer) {
                    return false;
                }
                let (live, min, max) = peer.result();
                let (ours, queue) = self.added_latency();
                gst::debug!(
                    Self::cat(),
                    imp = self,
                    "latency: upstream {min} (live {live}), adding {ours}"
                );
                q.set(live, min + ours, max.map(|m| m + ours + queue));
                true
            }
            _ => gst::Pad::query_default(pad, Some(&*self.obj()), query),
        }
    }

    /// What the element adds to the minimum latency, and what its queue may add on top
    /// (to the maximum) when it keeps every frame.
    fn added_latency(&self) -> (gst::ClockTime, gst::ClockTime) {
        let frame = self
            .fps()
            .filter(|f| f.numer() > 0)
            .and_then(|f| gst::ClockTime::SECOND.mul_div_floor(f.denom() as u64, f.numer() as u64))
            .unwrap_or(gst::ClockTime::ZERO);
        // Before taking the stats lock: the chain takes it under the input lock.
        let dropping = self.drops_frames();
        let max_queue = self.stream_settings().max_queue;
        let settings = self.latency_settings();
        let mut stats = self.base().stats.lock().unwrap();
        let (latency_frames, batch_size) = if stats.batch_size > 0 {
            (stats.latency_frames, stats.batch_size)
        } else {
            (settings.latency_frames, settings.batch_size)
        };
        // Before the first model call, assume the element keeps up with the frame rate;
        // the measured time replaces this guess once known.
        let inference = stats
            .inference_estimate()
            .map(|d| gst::ClockTime::from_nseconds(d.as_nanos() as u64))
            .unwrap_or(frame);
        stats.announced_inference = stats.inference_estimate();
        let queue = if dropping {
            gst::ClockTime::ZERO
        } else {
            frame.max(inference) * max_queue as u64
        };
        let ours = added_latency(latency_frames, batch_size, frame, inference, dropping)
            + stats.conversion_estimate();
        (ours, queue)
    }

    // ---- state --------------------------------------------------------------------------

    /// The element's state changes: the model loads on READY to PAUSED and goes on PAUSED
    /// to READY (or when the change fails).
    fn change_state_loading(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        gst::debug!(Self::cat(), imp = self, "{transition:?}");
        if transition == gst::StateChange::ReadyToPaused {
            self.load()?;
            self.base().running.store(true, Ordering::SeqCst);
            if self.obj().find_property("provider").is_some() {
                self.obj().notify("provider");
            }
        }
        let ret = self.parent_change_state(transition);
        match transition {
            gst::StateChange::ReadyToPaused if ret.is_err() => self.reset_for_stop(),
            gst::StateChange::PausedToReady => self.reset_for_stop(),
            _ => (),
        }
        ret
    }

    /// A model loaded: fresh stats and queues for the stream to come.
    fn reset_for_start(&self, stats: Stats<Self::StatsExtra>) {
        let max_queue = self.stream_settings().max_queue;
        let base = self.base();
        let batch_size = stats.batch_size;
        *base.stats.lock().unwrap() = stats;
        *base.input.lock().unwrap() = InputState::default();
        {
            let mut q = base.queue.lock();
            q.drain();
            q.max_frames = max_queue as usize;
        }
        // The output thread may hold two batches: one being pushed, one ready.
        base.out_queue.lock().max_frames = 2 * batch_size;
        *base.out_conv.lock().unwrap() = None;
    }

    /// The element stopped: nothing of the stream or the model stays.
    fn reset_for_stop(&self) {
        let base = self.base();
        base.running.store(false, Ordering::SeqCst);
        *self.worker().lock().unwrap() = None;
        *base.out_conv.lock().unwrap() = None;
        *base.input.lock().unwrap() = InputState::default();
        base.queue.lock().drain();
        self.unload();
    }

    /// A new `max-queue` or `drop-frames`: a producer waiting on a full queue looks again.
    fn stream_settings_changed(&self, s: &StreamSettings) {
        let queue = &self.base().queue;
        queue.lock().max_frames = s.max_queue as usize;
        queue.notify();
    }

    /// From `constructed`: adds the sink pad, the element's `others`, then the src pad.
    fn add_pads(&self, others: &[&gst::Pad]) {
        let obj = self.obj();
        let pads = std::iter::once(self.sinkpad())
            .chain(others.iter().copied())
            .chain([self.srcpad()]);
        for pad in pads {
            obj.add_pad(pad).expect("a pad of a new element");
        }
    }

    // ---- properties ---------------------------------------------------------------------

    /// Refuses a setting: the old value stays, the user learns why on the bus.
    fn refuse(&self, what: &str) {
        gst::warning!(Self::cat(), imp = self, "{what}");
        gst::element_imp_warning!(self, gst::LibraryError::Settings, ("{}", what));
    }

    /// Refuses (true) a load-time property while the stream runs.
    fn refused_while_running(&self, pspec: &glib::ParamSpec) -> bool {
        let refused = pspec.flags().contains(gst::PARAM_FLAG_MUTABLE_READY)
            && self.base().running.load(Ordering::SeqCst);
        if refused {
            self.refuse(&format!(
                "{} refused while the stream runs: it is used when the model loads; set it in the NULL or READY state",
                pspec.name()
            ));
        }
        refused
    }

    /// The read-only properties the base answers: `stats` and `provider`.
    fn base_property(&self, name: &str) -> Option<glib::Value> {
        match name {
            "stats" => Some(self.stats_structure().to_value()),
            "provider" => Some(self.base().stats.lock().unwrap().provider.to_value()),
            _ => None,
        }
    }
}

impl<T: InferElement> InferElementExt for T {}
