// SPDX-License-Identifier: MPL-2.0
//! The two threads of `onnxtransform` behind the streaming thread: the inference task (the
//! src pad's task), which collects batches and only runs the model, and the output thread,
//! which turns output tensors into buffers of the negotiated format and pushes them with
//! the events that came between the frames. The queues between them are
//! [`crate::infer::queue`].

use std::sync::mpsc;
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::imp::{CAT, METADATA_COPY, OnnxTransform};
use super::model::{ImageModel, OutPicture, Postprocess, TensorData};
use crate::infer::convert::{OutputConverter, converter_threads};
use crate::infer::queue::{Popped, QueueItem};

/// Frame duration assumed for the idle timeout when the input has no frame rate.
const IDLE_FRAME_GUESS: Duration = Duration::from_millis(100);
const MIN_IDLE: Duration = Duration::from_millis(20);

/// A frame preprocessed on the streaming thread, waiting for inference.
pub(super) struct QueuedFrame {
    pub data: TensorData,
    pub width: usize,
    pub height: usize,
    /// A buffer without memory carrying the input's timestamps, offsets, flags and metas.
    pub meta: gst::Buffer,
    pub running_time: Option<gst::ClockTime>,
    pub index: u64,
}

/// A serialized event with what the output thread must do with it.
pub(super) enum Deferred {
    Event(gst::Event),
    Caps(gst::Event, gst_video::VideoInfo),
}

/// What the streaming thread hands to the task, in stream order.
pub(super) enum Item {
    Frame(QueuedFrame),
    Event(Deferred),
    Eos(gst::Event),
    Drain(mpsc::Sender<()>),
}

impl QueueItem for Item {
    fn is_frame(&self) -> bool {
        matches!(self, Item::Frame(_))
    }
}

/// What the task hands to the output thread, in stream order.
pub(super) enum OutItem {
    Frame(OutPicture, gst::Buffer),
    Event(Deferred),
    Eos(gst::Event),
    Drained(mpsc::Sender<()>),
}

impl QueueItem for OutItem {
    fn is_frame(&self) -> bool {
        matches!(self, OutItem::Frame(..))
    }
}

/// Task side: the model and the partial batch. Exists from start to stop.
pub(super) struct Worker {
    pub model: ImageModel,
    pub batch_size: usize,
    pub batch: Vec<QueuedFrame>,
    /// Events that came after frames of the partial batch: they leave after them.
    pub deferred: Vec<Deferred>,
}

impl Worker {
    pub fn new(model: ImageModel, batch_size: usize) -> Self {
        Worker {
            model,
            batch_size: batch_size.max(1),
            batch: Vec::new(),
            deferred: Vec::new(),
        }
    }
}

/// Output thread side: the negotiated output format and the tensor-to-pixels mapping.
#[derive(Default)]
pub(super) struct OutState {
    pub conv: Option<OutputConverter>,
    pub post: Option<Postprocess>,
}

impl OnnxTransform {
    pub(super) fn start_task(&self) -> Result<(), glib::BoolError> {
        let obj = self.obj().clone();
        self.srcpad.start_task(move || obj.imp().task_iteration())
    }

    fn idle_timeout(&self) -> Option<Duration> {
        if self.worker.lock().unwrap().as_ref()?.batch.is_empty() {
            return None;
        }
        let frame = self
            .fps()
            .filter(|f| f.numer() > 0 && f.denom() > 0)
            .map(|f| Duration::from_secs_f64(f.denom() as f64 / f.numer() as f64))
            .unwrap_or(IDLE_FRAME_GUESS);
        Some((2 * frame).max(MIN_IDLE))
    }

    fn task_iteration(&self) {
        let idle = self.idle_timeout();
        let item = match self.queue.pop_wait(|q| q.flushing || q.flow.is_err(), idle) {
            Popped::Item(item) => Some(item),
            Popped::GaveUp => {
                let _ = self.srcpad.pause_task();
                return;
            }
            // Input stalled: the partial batch goes out now.
            Popped::TimedOut => None,
        };
        let mut guard = self.worker.lock().unwrap();
        let Some(w) = guard.as_mut() else {
            drop(guard);
            let _ = self.srcpad.pause_task();
            return;
        };
        let res = match item {
            None => self.run_batch(w),
            Some(Item::Frame(f)) => {
                // A new size (caps) ends the batch before it.
                let resized = w
                    .batch
                    .first()
                    .is_some_and(|b| (b.width, b.height) != (f.width, f.height));
                let res = if resized { self.run_batch(w) } else { Ok(()) };
                w.batch.push(f);
                res.and_then(|()| {
                    if w.batch.len() >= w.batch_size {
                        self.run_batch(w)
                    } else {
                        Ok(())
                    }
                })
            }
            Some(Item::Event(d)) if w.batch.is_empty() => self.send_out(OutItem::Event(d)),
            Some(Item::Event(d)) => {
                w.deferred.push(d);
                Ok(())
            }
            Some(Item::Eos(ev)) => self
                .run_batch(w)
                .and_then(|()| self.send_out(OutItem::Eos(ev))),
            Some(Item::Drain(done)) => self
                .run_batch(w)
                .and_then(|()| self.send_out(OutItem::Drained(done))),
        };
        drop(guard);
        if let Err(err) = res {
            self.on_flow_error(err);
        }
    }

    /// Runs the partial or full batch, hands its pictures to the output thread, then the
    /// events that waited for them.
    fn run_batch(&self, w: &mut Worker) -> Result<(), gst::FlowError> {
        let frames = std::mem::take(&mut w.batch);
        if let Some(first) = frames.first() {
            if let Some(rt) = first.running_time {
                let _ = self.obj().sync_values(rt);
            }
            let (fw, fh) = (first.width, first.height);
            let mut metas = Vec::with_capacity(frames.len());
            let mut inputs = Vec::with_capacity(frames.len());
            for f in frames {
                metas.push(f.meta);
                inputs.push(f.data);
            }
            let start = Instant::now();
            let outs = w.model.run(inputs, fw, fh).map_err(|e| {
                gst::element_imp_error!(
                    self,
                    gst::StreamError::Failed,
                    ("Inference failed: {}", e),
                    ["The model call failed; the frames done so far were pushed, then EOS"]
                );
                gst::FlowError::Error
            })?;
            self.record_inference(start.elapsed());
            for (pic, meta) in outs.into_iter().zip(metas) {
                self.send_out(OutItem::Frame(pic, meta))?;
            }
        }
        for d in std::mem::take(&mut w.deferred) {
            self.send_out(OutItem::Event(d))?;
        }
        Ok(())
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

    fn send_out(&self, item: OutItem) -> Result<(), gst::FlowError> {
        let frame = item.is_frame();
        self.out_queue
            .push_wait(item, |o| {
                if o.flushing {
                    return Err(gst::FlowError::Flushing);
                }
                self.queue.lock().flow.map(|_| ())
            })
            .inspect_err(|_| {
                if frame {
                    self.stats.lock().unwrap().frames_dropped += 1;
                }
            })
    }

    /// Keeps the first flow error (returned to upstream by the chain function); false when
    /// one was recorded already.
    fn record_flow_error(&self, err: gst::FlowError) -> bool {
        let first = {
            let mut q = self.queue.lock();
            let first = q.flow.is_ok();
            if first {
                q.flow = Err(err);
            }
            self.queue.notify();
            first
        };
        let _o = self.out_queue.lock();
        self.out_queue.notify();
        first
    }

    fn on_flow_error(&self, err: gst::FlowError) {
        if self.record_flow_error(err)
            && !matches!(err, gst::FlowError::Flushing | gst::FlowError::Eos)
        {
            // Downstream still gets the frames already done, then EOS.
            let mut o = self.out_queue.lock();
            o.push_back(OutItem::Eos(gst::event::Eos::new()));
            self.out_queue.notify();
        }
        let _ = self.srcpad.pause_task();
    }

    // ---- output thread ------------------------------------------------------------------

    pub(super) fn output_loop(&self) {
        loop {
            let item = {
                let mut o = self.out_queue.lock();
                loop {
                    if o.stop {
                        return;
                    }
                    if !o.flushing
                        && let Some(item) = o.pop_front()
                    {
                        o.busy = true;
                        self.out_queue.notify();
                        break item;
                    }
                    o = self.out_queue.wait(o);
                }
            };
            if let Err(err) = self.output_item(item)
                && self.record_flow_error(err)
            {
                match err {
                    gst::FlowError::Flushing | gst::FlowError::Eos => {}
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
            let mut o = self.out_queue.lock();
            o.busy = false;
            self.out_queue.notify();
        }
    }

    /// Downstream asked (RECONFIGURE): picks the output format again, at the size and rate
    /// of the frames now leaving, before the next frame.
    fn renegotiate_if_asked(&self) -> Result<(), gst::FlowError> {
        if !self.srcpad.check_reconfigure() {
            return Ok(());
        }
        let Some((fps, size)) = self.out_state.lock().unwrap().conv.as_ref().map(|c| {
            let i = c.out_info();
            (i.fps(), (i.width(), i.height()))
        }) else {
            return Ok(());
        };
        match self.negotiate_output(fps, size) {
            Ok((caps, info)) if self.srcpad.current_caps().as_ref() != Some(&caps) => self
                .output_item(OutItem::Event(Deferred::Caps(
                    gst::event::Caps::new(&caps),
                    info,
                ))),
            Ok(_) => Ok(()),
            Err(e) => {
                self.srcpad.mark_reconfigure();
                gst::warning!(CAT, imp = self, "renegotiation failed: {e}");
                Err(gst::FlowError::NotNegotiated)
            }
        }
    }

    fn output_item(&self, item: OutItem) -> Result<(), gst::FlowError> {
        match item {
            OutItem::Frame(pic, meta) => {
                if self.queue.lock().flow.is_err() {
                    self.stats.lock().unwrap().frames_dropped += 1;
                    return Ok(());
                }
                let start = Instant::now();
                self.renegotiate_if_asked()?;
                let buffer = {
                    let st = self.out_state.lock().unwrap();
                    let (Some(conv), Some(post)) = (st.conv.as_ref(), st.post.as_ref()) else {
                        gst::element_imp_error!(
                            self,
                            gst::CoreError::Negotiation,
                            ["No output caps before the first frame"]
                        );
                        return Err(gst::FlowError::NotNegotiated);
                    };
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
                            [
                                "A model whose output size changes from frame to frame is not supported"
                            ]
                        );
                        return Err(gst::FlowError::Error);
                    }
                    let mut rgb = Vec::new();
                    post.run(&pic, &mut rgb);
                    let mut buffer = conv.convert(rgb).map_err(|e| {
                        gst::element_imp_error!(self, gst::StreamError::Failed, ["{}", e]);
                        gst::FlowError::Error
                    })?;
                    let b = buffer.get_mut().expect("new buffer is writable");
                    if let Err(e) = meta.copy_into(b, METADATA_COPY, ..) {
                        gst::warning!(CAT, imp = self, "cannot copy metadata: {e}");
                    }
                    buffer
                };
                let took = start.elapsed();
                if let Err(e) = self.srcpad.push(buffer) {
                    self.stats.lock().unwrap().frames_dropped += 1;
                    return Err(e);
                }
                {
                    let mut s = self.stats.lock().unwrap();
                    s.frames_out += 1;
                    s.output_work += took;
                }
                self.post_stats(false);
                Ok(())
            }
            OutItem::Event(Deferred::Caps(ev, info)) => {
                let conv = OutputConverter::new(&info, converter_threads()).map_err(|e| {
                    gst::element_imp_error!(self, gst::CoreError::Negotiation, ["{}", e]);
                    gst::FlowError::NotNegotiated
                })?;
                if !self.srcpad.push_event(ev) {
                    gst::warning!(CAT, imp = self, "downstream refused caps {info:?}");
                    return Err(gst::FlowError::NotNegotiated);
                }
                self.out_state.lock().unwrap().conv = Some(conv);
                Ok(())
            }
            OutItem::Event(Deferred::Event(ev)) => {
                let t = ev.type_();
                if !self.srcpad.push_event(ev) {
                    gst::debug!(CAT, imp = self, "downstream refused {t:?}");
                }
                Ok(())
            }
            OutItem::Eos(ev) => {
                self.post_stats(true);
                self.srcpad.push_event(ev);
                Ok(())
            }
            OutItem::Drained(done) => {
                let _ = done.send(());
                Ok(())
            }
        }
    }
}
