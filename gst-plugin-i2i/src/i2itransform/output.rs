// SPDX-License-Identifier: MPL-2.0
//! The output thread of `i2itransform`.
//!
//! It turns the engine's pictures into buffers of the negotiated output format, copies the
//! input frame's metadata onto them and pushes them, together with the events that came
//! between the frames, so that this work overlaps the next model call on the task. It also
//! renegotiates when downstream asks (RECONFIGURE) and ends the stream after a flow error.

use std::sync::mpsc;

use gst::prelude::*;
use gst::subclass::prelude::*;

use super::imp::{CAT, I2iTransform, METADATA_COPY};
use super::task::Deferred;
use crate::diffusion::DecodedFrame;
use crate::infer::convert::{OutputConverter, converter_threads};
use crate::infer::queue::QueueItem;

/// What the task hands to the output thread, in stream order.
pub(super) enum OutItem {
    /// An engine picture and the metadata of its input frame.
    Frame(DecodedFrame, gst::Buffer),
    Event(Deferred),
    Eos(gst::Event),
    /// Everything before it has been pushed: answers a DRAIN query.
    Drained(mpsc::Sender<()>),
}

impl QueueItem for OutItem {
    fn is_frame(&self) -> bool {
        matches!(self, OutItem::Frame(..))
    }
}

/// Output thread side: the negotiated output format.
#[derive(Default)]
pub(super) struct OutState {
    pub conv: Option<OutputConverter>,
    pub width: u32,
    pub height: u32,
    /// `output=latent`: the engine's frames are latents, pushed as they are.
    pub latent: bool,
}

impl I2iTransform {
    pub(super) fn output_loop(&self) {
        gst::debug!(CAT, imp = self, "output thread running");
        loop {
            let item = {
                let mut o = self.out_queue.lock();
                loop {
                    if o.stop {
                        gst::debug!(CAT, imp = self, "output thread ends");
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
            if let Err(err) = self.output_item(item) {
                self.on_output_error(err);
            }
            // Only now: a flush waiting for the output to be idle then sees the error
            // recorded before it resets the flow.
            let mut o = self.out_queue.lock();
            o.busy = false;
            self.out_queue.notify();
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
                if self.queue.lock().flow.is_err() {
                    // After an error nothing more goes out.
                    self.stats.lock().unwrap().frames_dropped += 1;
                    return Ok(());
                }
                let mut rgb = Vec::new();
                let work_start = std::time::Instant::now();
                if st.latent {
                    rgb.extend(out.decoded().iter().flat_map(|v| v.to_ne_bytes()));
                } else {
                    out.to_rgb8(st.width, st.height, &mut rgb);
                    // For a `feedback` ControlNet preprocessor (none with latent output).
                    self.remember_output(&rgb);
                }
                self.renegotiate_if_asked(&mut st)?;
                let Some(conv) = st.conv.as_ref() else {
                    gst::element_imp_error!(
                        self,
                        gst::CoreError::Negotiation,
                        ["No output caps before the first frame"]
                    );
                    return Err(gst::FlowError::NotNegotiated);
                };
                let converted = if st.latent {
                    Ok(gst::Buffer::from_mut_slice(rgb))
                } else {
                    conv.convert(rgb)
                };
                let mut buffer = converted.map_err(|e| {
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
                let work_took = work_start.elapsed();
                if let Err(e) = self.srcpad.push(buffer) {
                    // Flushing or stopping: this frame is lost with the others in flight.
                    self.stats.lock().unwrap().frames_dropped += 1;
                    return Err(e);
                }
                {
                    let mut s = self.stats.lock().unwrap();
                    s.frames_out += 1;
                    s.output_work += work_took;
                    if out.skipped {
                        s.frames_skipped += 1;
                    }
                }
                self.post_stats(false);
                Ok(())
            }
            OutItem::Event(d) => self.push_event_item(&mut st, d),
            OutItem::Eos(ev) => {
                drop(st);
                gst::debug!(CAT, imp = self, "pushing EOS");
                self.post_stats(true);
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
                // The output is at the model size.
                st.width = info.width();
                st.height = info.height();
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
        // At the size of the frames now leaving, not of the input's latest caps.
        match self.negotiate_output(fps, (st.width, st.height)) {
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
}
