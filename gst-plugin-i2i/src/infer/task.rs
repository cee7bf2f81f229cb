// SPDX-License-Identifier: MPL-2.0
//! The inference task of an inference element: the src pad's task.
//!
//! It takes prepared frames and serialized events off the input queue and hands them to
//! the element's worker ([`InferElement::task_frame`], [`InferElement::task_event`]), which
//! collects batches and only runs the model; finished pictures go to the output thread
//! ([`super::output`]) in input order. When no input comes for about two frame durations,
//! or at EOS and DRAIN, the frames the worker holds back come out
//! ([`InferElement::task_drain`]). A model failure becomes an element error in one place,
//! [`InferTask::engine_failed`], and every flow error in [`InferTask::on_flow_error`].

use std::time::{Duration, Instant};

use gst::prelude::*;
use gst::subclass::prelude::*;

use super::element::InferElement;
use super::element::OutItem;
use super::input::Item;
use super::queue::{Popped, QueueItem};

/// Frame duration assumed for the idle timeout when the input has no frame rate.
const IDLE_FRAME_GUESS: Duration = Duration::from_millis(100);
/// Shortest idle timeout (very high frame rates, a scheduler that wakes late).
const MIN_IDLE: Duration = Duration::from_millis(20);

/// The task's side of an inference element; implemented for every [`InferElement`].
pub trait InferTask: InferElement {
    fn start_task(&self) -> Result<(), glib::BoolError> {
        let obj = self.obj().clone();
        self.srcpad().start_task(move || obj.imp().task_iteration())
    }

    fn task_iteration(&self) {
        let base = self.base();
        let idle = self.idle_timeout();
        let item = match base.queue.pop_wait(|q| q.flushing || q.flow.is_err(), idle) {
            Popped::Item(item) => Some(item),
            Popped::GaveUp => {
                let _ = self.srcpad().pause_task();
                return;
            }
            Popped::TimedOut => None,
        };
        let mut guard = self.worker().lock().unwrap();
        let Some(w) = guard.as_mut() else {
            drop(guard);
            let _ = self.srcpad().pause_task();
            return;
        };
        let res = match item {
            // Input stalled: the frames held back (partial batch, stream batch) come out
            // now rather than when the next frame or EOS arrives.
            None => {
                gst::debug!(
                    Self::cat(),
                    imp = self,
                    "no input for {idle:?}: finishing the frames in flight"
                );
                self.task_drain(w)
            }
            Some(Item::Frame(f)) => self.task_frame(w, f),
            Some(Item::Event(d)) => self.task_event(w, d),
            Some(Item::Eos(ev)) => self.task_drain(w).and_then(|()| {
                gst::debug!(Self::cat(), imp = self, "all frames out, EOS follows");
                self.send_out(OutItem::Eos(ev))
            }),
            Some(Item::Drain(done)) => self
                .task_drain(w)
                .and_then(|()| self.send_out(OutItem::Drained(done))),
        };
        drop(guard);
        if let Err(err) = res {
            self.on_flow_error(err);
        }
    }

    /// How long to wait for input before finishing the frames held back: about two frame
    /// durations; None when nothing is held back.
    fn idle_timeout(&self) -> Option<Duration> {
        {
            let guard = self.worker().lock().unwrap();
            if !Self::holds_frames(guard.as_ref()?) {
                return None;
            }
        }
        let frame = self
            .fps()
            .filter(|f| f.numer() > 0 && f.denom() > 0)
            .map(|f| Duration::from_secs_f64(f.denom() as f64 / f.numer() as f64))
            .unwrap_or(IDLE_FRAME_GUESS);
        Some((2 * frame).max(MIN_IDLE))
    }

    /// The input's frame rate (None before caps).
    fn fps(&self) -> Option<gst::Fraction> {
        self.base().input.lock().unwrap().fps
    }

    /// Queues an item for the output thread, waiting while it has enough frames to do.
    fn send_out(&self, item: OutItem<Self::Picture>) -> Result<(), gst::FlowError> {
        let base = self.base();
        let frame = item.is_frame();
        base.out_queue
            .push_wait(item, |o| {
                if o.flushing {
                    return Err(gst::FlowError::Flushing);
                }
                base.queue.lock().flow.map(|_| ())
            })
            .inspect_err(|_| {
                if frame {
                    // Flushing or stopping: this frame is lost with the others in flight.
                    base.stats.lock().unwrap().frames_dropped += 1;
                }
            })
    }

    /// Counts a model call of `took` and announces the latency again when its estimate
    /// moved.
    fn record_inference(&self, took: Duration) {
        gst::trace!(Self::cat(), imp = self, "model call took {took:?}");
        if self.base().stats.lock().unwrap().record_inference(took) {
            let obj = self.obj();
            let _ = obj.post_message(gst::message::Latency::builder().src(&*obj).build());
        }
    }

    /// Runs `call` (a model call), counting its time.
    fn timed<R>(&self, call: impl FnOnce() -> R) -> R {
        let start = Instant::now();
        let r = call();
        self.record_inference(start.elapsed());
        r
    }

    /// The one place a model failure becomes an element error; the stream then ends after
    /// the frames already done.
    fn engine_failed(&self, e: impl std::fmt::Display) -> gst::FlowError {
        gst::element_imp_error!(
            self,
            gst::StreamError::Failed,
            ("Inference failed: {}", e),
            ["The model call failed; the frames done so far were pushed, then EOS"]
        );
        gst::FlowError::Error
    }

    /// Keeps the first flow error (returned to upstream by the chain function); false when
    /// one was recorded already.
    fn record_flow_error(&self, err: gst::FlowError) -> bool {
        let base = self.base();
        let first = {
            let mut q = base.queue.lock();
            let first = q.flow.is_ok();
            if first {
                q.flow = Err(err);
            }
            base.queue.notify();
            first
        };
        let _o = base.out_queue.lock();
        base.out_queue.notify();
        first
    }

    /// A flow error in the task (the model, or the output side refusing items).
    fn on_flow_error(&self, err: gst::FlowError) {
        if self.record_flow_error(err) {
            match err {
                gst::FlowError::Flushing | gst::FlowError::Eos => {
                    gst::debug!(Self::cat(), imp = self, "task pausing: {err:?}");
                }
                _ => {
                    // Model errors are posted where they happen; downstream still gets the
                    // frames already done, then EOS.
                    let out_queue = &self.base().out_queue;
                    let mut o = out_queue.lock();
                    o.push_back(OutItem::Eos(gst::event::Eos::new()));
                    out_queue.notify();
                }
            }
        }
        let _ = self.srcpad().pause_task();
    }
}

impl<T: InferElement> InferTask for T {}
