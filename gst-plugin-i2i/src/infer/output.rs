// SPDX-License-Identifier: MPL-2.0
//! The output thread of an inference element.
//!
//! It turns the model's pictures into buffers of the negotiated output format (the
//! element renders them, [`InferElement::render`]), copies the input frame's metadata onto
//! them and pushes them, together with the events that came between the frames, so that
//! this work overlaps the next model call on the task. It renegotiates when downstream
//! asks (RECONFIGURE), posts the stats messages, and ends the stream after a flow error
//! as GstBaseSrc's loop ends it: quietly on flushing or EOS, with an error message and EOS
//! when the output is not linked or not negotiated, with EOS otherwise.

use std::time::Instant;

use gst::prelude::*;
use gst::subclass::prelude::*;

use super::convert::{OutputConverter, converter_threads};
use super::element::{InferElement, InferStats, OutItem, Rendered};
use super::input::{Deferred, METADATA_COPY};
use super::task::InferTask;

/// The output thread's side of an inference element; implemented for every
/// [`InferElement`].
pub trait InferOutput: InferElement {
    /// The output thread: pushes what the task hands over until the src pad stops.
    fn output_loop(&self) {
        gst::debug!(Self::cat(), imp = self, "output thread running");
        let out_queue = &self.base().out_queue;
        while let Some(item) = out_queue.take_busy() {
            if let Err(err) = self.output_item(item)
                && self.record_flow_error(err)
            {
                self.end_after_flow_error(err);
            }
            // Only now: a flush waiting for the output to be idle then sees the error
            // recorded before it resets the flow.
            out_queue.done();
        }
        gst::debug!(Self::cat(), imp = self, "output thread ends");
    }

    /// Ends the stream after the output thread's first flow error `err`.
    fn end_after_flow_error(&self, err: gst::FlowError) {
        match err {
            gst::FlowError::Flushing | gst::FlowError::Eos => {
                gst::debug!(Self::cat(), imp = self, "output stops: {err:?}");
            }
            gst::FlowError::NotLinked | gst::FlowError::NotNegotiated => {
                gst::element_imp_error!(
                    self,
                    gst::StreamError::Failed,
                    ("Internal data stream error."),
                    ["streaming stopped, reason {err:?}"]
                );
                self.srcpad().push_event(gst::event::Eos::new());
            }
            _ => {
                self.srcpad().push_event(gst::event::Eos::new());
            }
        }
    }

    /// Converts and pushes one frame, or pushes one event.
    fn output_item(&self, item: OutItem<Self::Picture>) -> Result<(), gst::FlowError> {
        let base = self.base();
        match item {
            OutItem::Frame(pic, meta) => {
                if base.queue.lock().flow.is_err() {
                    // After an error nothing more goes out.
                    base.stats.lock().unwrap().frames_dropped += 1;
                    return Ok(());
                }
                let start = Instant::now();
                self.renegotiate_if_asked()?;
                let buffer = {
                    let conv = base.out_conv.lock().unwrap();
                    let Some(conv) = conv.as_ref() else {
                        gst::element_imp_error!(
                            self,
                            gst::CoreError::Negotiation,
                            ["No output caps before the first frame"]
                        );
                        return Err(gst::FlowError::NotNegotiated);
                    };
                    let converted = match self.render(&pic, conv)? {
                        Rendered::Rgb(rgb) => conv.convert(rgb),
                        Rendered::Buffer(b) => Ok(b),
                    };
                    let mut buffer = converted.map_err(|e| {
                        gst::element_imp_error!(self, gst::StreamError::Failed, ["{}", e]);
                        gst::FlowError::Error
                    })?;
                    let b = buffer.get_mut().expect("new buffer is writable");
                    if let Err(e) = meta.copy_into(b, METADATA_COPY, ..) {
                        gst::warning!(Self::cat(), imp = self, "cannot copy metadata: {e}");
                    }
                    buffer
                };
                let took = start.elapsed();
                if let Err(e) = self.srcpad().push(buffer) {
                    // Flushing or stopping: this frame is lost with the others in flight.
                    base.stats.lock().unwrap().frames_dropped += 1;
                    return Err(e);
                }
                {
                    let mut s = base.stats.lock().unwrap();
                    s.frames_out += 1;
                    s.output_work += took;
                    Self::count_pushed(&pic, &mut s.extra);
                }
                self.post_stats(false);
                Ok(())
            }
            OutItem::Event(d) => self.push_deferred(d),
            OutItem::Eos(ev) => {
                gst::debug!(Self::cat(), imp = self, "pushing EOS");
                self.post_stats(true);
                self.srcpad().push_event(ev);
                Ok(())
            }
            OutItem::Drained(done) => {
                // The query may have given up (flush): nobody to tell then.
                let _ = done.send(());
                Ok(())
            }
        }
    }

    /// Pushes an event that waited for the frames before it; new caps also set the
    /// output format.
    fn push_deferred(&self, d: Deferred) -> Result<(), gst::FlowError> {
        match d {
            Deferred::Caps(ev, info) => {
                let conv = OutputConverter::new(&info, converter_threads()).map_err(|e| {
                    gst::element_imp_error!(self, gst::CoreError::Negotiation, ["{}", e]);
                    gst::FlowError::NotNegotiated
                })?;
                if !self.srcpad().push_event(ev) {
                    gst::warning!(Self::cat(), imp = self, "downstream refused caps {info:?}");
                    return Err(gst::FlowError::NotNegotiated);
                }
                *self.base().out_conv.lock().unwrap() = Some(conv);
            }
            Deferred::Event(ev) => {
                let t = ev.type_();
                if !self.srcpad().push_event(ev) {
                    gst::debug!(Self::cat(), imp = self, "downstream refused {t:?}");
                }
            }
        }
        Ok(())
    }

    /// Downstream asked (RECONFIGURE): picks the output format again, at the size and rate
    /// of the frames now leaving (not of the input's latest caps), before the next frame.
    fn renegotiate_if_asked(&self) -> Result<(), gst::FlowError> {
        let srcpad = self.srcpad();
        if !srcpad.check_reconfigure() {
            return Ok(());
        }
        let leaving = self.base().out_conv.lock().unwrap().as_ref().map(|c| {
            let i = c.out_info();
            (i.fps(), (i.width(), i.height()))
        });
        let Some((fps, size)) = leaving else {
            return Ok(());
        };
        match self.negotiate_output(fps, size) {
            Ok((caps, info)) if srcpad.current_caps().as_ref() != Some(&caps) => {
                self.push_deferred(Deferred::Caps(gst::event::Caps::new(&caps), info))
            }
            Ok(_) => Ok(()),
            Err(e) => {
                srcpad.mark_reconfigure();
                gst::warning!(Self::cat(), imp = self, "renegotiation failed: {e}");
                Err(gst::FlowError::NotNegotiated)
            }
        }
    }
}

impl<T: InferElement> InferOutput for T {}
