// SPDX-License-Identifier: MPL-2.0
//! What the inference task of `i2itransform` does with the engine, on the shared task
//! loop ([`crate::infer::task`]).
//!
//! It collects batches of `batch-size`, applies the live settings changed since the last
//! batch and runs the engine. Finished pictures go to the output thread in input order;
//! an event waits (in `Worker::deferred`) for the output of the last frame that came
//! before it, since the engine holds frames back (the stream batch). Every engine failure
//! goes through [`InferTask::engine_failed`].

use std::time::{Duration, Instant};

use gst::prelude::*;
use gst::subclass::prelude::*;

use super::imp::{CAT, I2iTransform};
use super::live;
use super::worker::{FirstSettings, FrameMeta, Worker};
use crate::diffusion::{DecodedFrame, Engine, PreparedFrame};
use crate::infer::element::OutItem;
use crate::infer::input::{Deferred, Queued};
use crate::infer::pads::InferElementExt;
use crate::infer::task::InferTask;
use i2i_core::settings::state::APPLIED_EVENT;

impl I2iTransform {
    pub(super) fn batch_frame(
        &self,
        w: &mut Worker,
        f: Queued<PreparedFrame>,
    ) -> Result<(), gst::FlowError> {
        w.batch.push(f);
        if w.batch.len() >= w.batch_size {
            self.run_batch(w)
        } else {
            Ok(())
        }
    }

    /// An event from the stream: new caps with another model size reload the engine;
    /// others wait for the output of the frames taken before them.
    pub(super) fn stream_event(&self, w: &mut Worker, d: Deferred) -> Result<(), gst::FlowError> {
        match d {
            Deferred::Caps(ev, info)
                if (info.width(), info.height()) != (w.load.width, w.load.height) =>
            {
                self.reload_at(w, info.width(), info.height())
                    .and_then(|()| self.send_out(OutItem::Event(Deferred::Caps(ev, info))))
            }
            d => match w.last_pending_tag() {
                Some(tag) => {
                    w.deferred.push_back((tag, d));
                    Ok(())
                }
                None => self.send_out(OutItem::Event(d)),
            },
        }
    }

    /// New input caps need another model size (`size-from-input`): the frames in flight
    /// come out at the old size, then the engine is loaded again at the new one.
    pub(super) fn reload_at(
        &self,
        w: &mut Worker,
        width: u32,
        height: u32,
    ) -> Result<(), gst::FlowError> {
        self.drain_engine(w)?;
        let mut load = w.load.clone();
        load.width = width;
        load.height = height;
        gst::info!(
            CAT,
            imp = self,
            "loading the model again at {width}x{height}"
        );
        // Frames prepared on the input side keep using (and refilling) the same pool.
        let pre = w.engine.preprocessor();
        w.engine =
            Engine::load_sharing(&load, &w.applied.params, &self.lora_files).map_err(|e| {
                gst::element_imp_error!(
                    self,
                    gst::LibraryError::Init,
                    (
                        "Could not load the model at {}x{} (size-from-input): {}",
                        width,
                        height,
                        e
                    ),
                    ["Set size-from-input=false and width/height to a size the model takes"]
                );
                gst::FlowError::Error
            })?;
        w.engine.share_preprocessor(&pre);
        self.restore_ip(&mut w.engine);
        w.engine
            .set_latent_output(self.settings.lock().unwrap().output == super::OutputMode::Latent);
        w.load = load;
        Ok(())
    }

    /// Notes what came on the settings pad, for [`Self::wait_for_first_settings`]: the
    /// settings holder's first state ends the wait, an empty one too (the holder has no
    /// settings yet).
    pub(super) fn settings_arrived(&self, empty: bool) {
        let mut first = self.settings_received.lock().unwrap();
        if *first == FirstSettings::Waiting {
            *first = if empty {
                FirstSettings::Empty
            } else {
                FirstSettings::Settings
            };
        }
        self.settings_cond.notify_all();
    }

    /// Before the first frame: when the settings pad is linked and `wait-for-settings` is
    /// on, waits (at most `settings-timeout`) for the settings holder's first state, so
    /// that the first frames already run with the holder's prompt. A holder with no
    /// settings yet ends the wait at once (said once, as an INFO); a WARNING when nothing
    /// came at all.
    fn wait_for_first_settings(&self) {
        let (wait, timeout_ms) = {
            let s = self.settings.lock().unwrap();
            (s.wait_for_settings, s.settings_timeout_ms)
        };
        if !wait || timeout_ms == 0 || !self.settingspad.is_linked() {
            return;
        }
        let deadline = Instant::now() + Duration::from_millis(timeout_ms as u64);
        let mut received = self.settings_received.lock().unwrap();
        while *received == FirstSettings::Waiting {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                drop(received);
                let prompt = self.settings.lock().unwrap().live.params.prompt.clone();
                gst::element_imp_warning!(
                    self,
                    gst::StreamError::Failed,
                    (
                        "No settings arrived on the settings pad within {} ms, not even the settings holder's state: starting with the properties' values (prompt \"{}\"). Check that the settings holder runs and is reachable, raise settings-timeout, or set wait-for-settings=false",
                        timeout_ms,
                        prompt
                    )
                );
                return;
            }
            if self.base.queue.lock().flushing {
                return;
            }
            received = self
                .settings_cond
                .wait_timeout(received, left.min(Duration::from_millis(50)))
                .unwrap()
                .0;
        }
        let first = *received;
        drop(received);
        if first == FirstSettings::Empty {
            let prompt = self.settings.lock().unwrap().live.params.prompt.clone();
            gst::element_imp_info!(
                self,
                gst::StreamError::Failed,
                (
                    "The settings holder has no settings yet: using the element's properties (prompt \"{}\") until it has",
                    prompt
                )
            );
        } else {
            gst::debug!(
                CAT,
                imp = self,
                "first settings arrived, the first frame follows"
            );
        }
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
        if !w.started {
            w.started = true;
            self.wait_for_first_settings();
        }
        self.apply_live(w, index)?;
        self.apply_control(w);
        self.apply_ip(w);

        let mut inputs = Vec::with_capacity(frames.len());
        for f in frames {
            w.in_flight.push_back(FrameMeta {
                tag: f.tag,
                meta: f.meta,
            });
            inputs.push(f.data);
        }
        let outs = self
            .timed(|| w.engine.process_prepared(inputs))
            .map_err(|e| self.engine_failed(e))?;
        self.push_outputs(w, outs)
    }

    /// Hands the engine the settings changed since the last batch and tells the
    /// application which frame they first hold for.
    fn apply_live(&self, w: &mut Worker, index: u64) -> Result<(), gst::FlowError> {
        let mut desired = self.settings.lock().unwrap().live.clone();
        if desired == w.applied {
            return Ok(());
        }
        if desired.params.lora != w.engine.params().lora
            && !w.engine.lora_ready(&desired.params.lora)
        {
            // Its files are still being read (off this thread): the running style stays
            // and the switch is asked again at the next batch.
            gst::debug!(CAT, imp = self, "frame {index}: LoRA files not read yet");
            desired.params.lora = w.engine.params().lora.clone();
            if desired == w.applied {
                return Ok(());
            }
        }
        if desired.params != *w.engine.params() {
            let old = w.engine.params();
            let restructure = desired.params.t_index_list != old.t_index_list
                || desired.params.num_inference_steps != old.num_inference_steps;
            if restructure && w.engine.in_flight() > 0 {
                // Finish the frames in flight with the schedule they started on.
                let outs = w
                    .engine
                    .drain_decoded()
                    .map_err(|e| self.engine_failed(e))?;
                self.push_outputs(w, outs)?;
            }
            if let Err(e) = w.engine.set_params(&desired.params) {
                self.refuse(&format!("settings not applied: {e}"));
                if self.settingspad.is_linked() {
                    // The operator who typed it sees why (settingssrc reports it).
                    let _ = self.settingspad.push_event(gst::event::CustomUpstream::new(
                        gst::Structure::builder(i2i_core::settings::state::REFUSED_EVENT)
                            .field("refused", format!("settings not applied: {e}"))
                            .build(),
                    ));
                }
                // A LoRA that does not fit keeps the running style, not the other changes.
                if desired.params.lora != w.engine.params().lora {
                    let mut without = desired.params.clone();
                    without.lora = w.engine.params().lora.clone();
                    let _ = w.engine.set_params(&without);
                }
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
            }
        }
        let changed = w.applied.changed(&desired);
        let report = desired.to_update().changes_since(&w.applied.to_update());
        let latency_before = w.engine.latency_frames();
        w.applied = desired;
        {
            let mut s = self.base.stats.lock().unwrap();
            s.extra.settings_applied += 1;
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
            .field("cfg-type", p.cfg_type.nick())
            .field("add-noise", p.add_noise)
            .field("similarity-threshold", p.similarity_threshold as f64)
            .field("max-skip-frames", p.max_skip_frames)
            .field("transition-frames", w.applied.params.transition_frames)
            .field(
                "prompt-blend",
                live::format_prompt_blend(&w.applied.params.prompt_blend),
            )
            .field(
                "seed-blend",
                live::format_seed_blend(&w.applied.params.seed_blend),
            )
            .field("blend-mode", w.applied.params.blend_mode.nick())
            .field("lora", &w.applied.params.lora)
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
    fn push_outputs(&self, w: &mut Worker, outs: Vec<DecodedFrame>) -> Result<(), gst::FlowError> {
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
            self.push_events_due(w, Some(tag))?;
        }
        Ok(())
    }

    /// Sends the deferred events due after frame `upto` (all of them for None).
    fn push_events_due(&self, w: &mut Worker, upto: Option<u64>) -> Result<(), gst::FlowError> {
        while let Some((after, _)) = w.deferred.front() {
            if upto.is_some_and(|t| *after > t) {
                break;
            }
            let (_, d) = w.deferred.pop_front().expect("front exists");
            self.send_out(OutItem::Event(d))?;
        }
        Ok(())
    }

    /// The partial batch goes through and the engine gives back every frame in flight,
    /// followed by the events that waited for them.
    pub(super) fn drain_engine(&self, w: &mut Worker) -> Result<(), gst::FlowError> {
        if !w.batch.is_empty() {
            self.run_batch(w)?;
        }
        if w.engine.in_flight() > 0 {
            let outs = w
                .engine
                .drain_decoded()
                .map_err(|e| self.engine_failed(e))?;
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
        self.push_events_due(w, None)
    }
}
