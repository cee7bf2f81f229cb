// SPDX-License-Identifier: MPL-2.0
//! What `i2itransform` does with its conditioning beyond the prompt ([`super::control`]):
//! the ControlNet settings checked against the model and handed to the engine before each
//! batch, the control images made on the streaming thread
//! ([`I2iTransform::prepare_control`]), the `feedback` preprocessor's last output, and the
//! `control_%u` request pads with their converters and newest frames.

use std::collections::VecDeque;
use std::sync::Arc;

use gst::prelude::*;
use gst::subclass::prelude::*;

use super::control::{ControlSettings, PAD_FRAMES, PadSlot, pad_frame, per_controlnet};
use super::imp::{CAT, I2iTransform};
use super::worker::Worker;
use crate::diffusion::{Engine, PreparedFrame};
use crate::infer::convert::{InputConverter, converter_threads};
use crate::infer::pads::InferElementExt;
use crate::preprocess::depth::DepthModel;
use crate::preprocess::{self, Preprocess};
use i2i_core::infer::ResizeMode;
use imageproc::image::{RgbImage, imageops};

impl I2iTransform {
    /// At start, after the model loaded: checks the ControlNet properties against the
    /// model and hands the engine its scales and feedback. An element ERROR names the
    /// model's UNet file, the property, what the model expects and what was given.
    pub(super) fn start_control(
        &self,
        engine: &mut Engine,
        c: &ControlSettings,
        size: (u32, u32),
    ) -> Result<(), gst::StateChangeError> {
        if let Some((_, e)) = c.refused.first() {
            gst::element_imp_error!(
                self,
                gst::LibraryError::Settings,
                ("Invalid property value: {}", e),
                ["Properties set before start are checked when the element starts"]
            );
            return Err(gst::StateChangeError);
        }
        let num = engine.controlnets();
        let unet = std::path::Path::new(&engine.options().model_dir).join("unet/model.onnx");
        let fail = |msg: String| {
            gst::element_imp_error!(
                self,
                gst::LibraryError::Settings,
                ("{}", msg),
                ["{}: the model has {} ControlNet(s)", unet.display(), num]
            );
            gst::StateChangeError
        };
        if num == 0 && (!c.controlnet_scales.is_empty() || !c.preprocess.is_empty()) {
            return Err(fail(format!(
                "controlnet-scales / controlnet-preprocess are set, but {} takes no control images (expected a fused UNet + ControlNet graph with controlnet_images or controlnet_conds): unset them or use a ControlNet model",
                unet.display()
            )));
        }
        let pre = per_controlnet(
            &c.preprocess,
            num,
            Preprocess::Input,
            "controlnet-preprocess",
        )
        .map_err(|e| fail(format!("{}: {e}", unet.display())))?;
        if num > 0 {
            let scales = per_controlnet(&c.controlnet_scales, num, 1.0, "controlnet-scales")
                .map_err(|e| fail(format!("{}: {e}", unet.display())))?;
            engine
                .set_controlnet_scales(&scales)
                .map_err(|e| fail(e.to_string()))?;
        }
        engine.set_latent_feedback(c.latent_feedback as f32);
        let depth = if pre.contains(&Preprocess::Depth) {
            let Some(file) = c.depth_model.as_ref() else {
                return Err(fail(
                    "controlnet-preprocess names depth but depth-model is not set: set it to an image-to-depth ONNX file (a Depth-Anything or MiDaS export)".into(),
                ));
            };
            let o = engine.options();
            let d = DepthModel::load(
                std::path::Path::new(file),
                engine.provider(),
                o.device_id,
                o.intra_threads,
                o.cpu_arena,
            )
            .map_err(|e| fail(format!("depth-model: {e}")))?;
            Some(d)
        } else {
            None
        };
        let mut inner = self.control.0.lock().unwrap();
        inner.depth = depth;
        inner.preprocess = pre;
        inner.last_output = None;
        inner.size = Some(size);
        inner.fallbacks = 0;
        inner.refused_scales = None;
        for slot in &mut inner.pads {
            slot.frames.clear();
            slot.conv = None;
        }
        Ok(())
    }

    /// Hands the engine the live control settings for the next batch. A refused scale
    /// list is reported once (bus WARNING) and the previous scales stay.
    pub(super) fn apply_control(&self, w: &mut Worker) {
        let c = self.settings.lock().unwrap().control.clone();
        let s = c.latent_feedback as f32;
        if w.engine.latent_feedback() != s {
            gst::debug!(CAT, imp = self, "latent feedback {s}");
            w.engine.set_latent_feedback(s);
        }
        let num = w.engine.controlnets();
        if num == 0 {
            return;
        }
        let wanted = match c.controlnet_scales.len() {
            0 => vec![1.0; num],
            1 => vec![c.controlnet_scales[0]; num],
            _ => c.controlnet_scales,
        };
        if wanted == w.engine.controlnet_scales() {
            return;
        }
        if let Err(e) = w.engine.set_controlnet_scales(&wanted) {
            let mut inner = self.control.0.lock().unwrap();
            if inner.refused_scales.as_ref() != Some(&wanted) {
                inner.refused_scales = Some(wanted);
                drop(inner);
                self.refuse(&format!("controlnet-scales not applied: {e}"));
            }
        } else {
            gst::debug!(CAT, imp = self, "controlnet scales {wanted:?}");
        }
    }

    /// On the streaming thread: the control image of each ControlNet for a frame (packed
    /// RGB8 `rgb` at the model size `w x h`, running time `rt`).
    pub(super) fn prepare_control(
        &self,
        prepared: &mut PreparedFrame,
        rgb: &[u8],
        (w, h): (u32, u32),
        rt: Option<gst::ClockTime>,
    ) {
        if prepared.controlnets() == 0 {
            return;
        }
        let mut inner = self.control.0.lock().unwrap();
        let pre = inner.preprocess.clone();
        for (k, p) in pre.iter().enumerate() {
            let image = match *p {
                Preprocess::Input => continue,
                Preprocess::Canny { low, high } => match preprocess::canny(rgb, w, h, low, high) {
                    Ok(e) => Arc::new(e),
                    Err(e) => {
                        gst::warning!(CAT, imp = self, "ControlNet {k}: {e}");
                        continue;
                    }
                },
                Preprocess::Feedback { weight } => match &inner.last_output {
                    Some(prev) => Arc::new(preprocess::feedback(rgb, prev, weight)),
                    None => continue,
                },
                Preprocess::Depth => {
                    let Some(d) = inner.depth.as_mut() else {
                        continue;
                    };
                    match d.run(rgb, w, h) {
                        Ok(map) => Arc::new(map),
                        Err(e) => {
                            inner.fallbacks += 1;
                            gst::warning!(CAT, imp = self, "ControlNet {k}: {e}");
                            continue;
                        }
                    }
                }
                Preprocess::Pad => match pad_frame(&inner.pads, k, rt) {
                    Some((f, size)) if size == (w, h) => f,
                    // Converted before the model size changed (size-from-input): stretched.
                    Some((f, (fw, fh))) => match RgbImage::from_raw(fw, fh, f.to_vec()) {
                        Some(img) => Arc::new(
                            imageops::resize(&img, w, h, imageops::FilterType::Triangle).into_raw(),
                        ),
                        None => continue,
                    },
                    None => {
                        inner.fallbacks += 1;
                        gst::debug!(
                            CAT,
                            imp = self,
                            "ControlNet {k}: no frame from control_{k} yet, the frame itself stands in"
                        );
                        continue;
                    }
                },
            };
            if let Err(e) = prepared.set_control_rgb8(k, &image) {
                inner.fallbacks += 1;
                gst::warning!(CAT, imp = self, "ControlNet {k}: {e}");
            }
        }
    }

    /// On the output thread: keeps the newest output for `feedback` preprocessors.
    pub(super) fn remember_output(&self, rgb: &[u8]) {
        let mut inner = self.control.0.lock().unwrap();
        if inner
            .preprocess
            .iter()
            .any(|p| matches!(p, Preprocess::Feedback { .. }))
        {
            inner.last_output = Some(Arc::new(rgb.to_vec()));
        }
    }

    /// Forgets the previous output and the control frames (flush).
    pub(super) fn flush_control(&self) {
        let mut inner = self.control.0.lock().unwrap();
        inner.last_output = None;
        for slot in &mut inner.pads {
            slot.frames.clear();
        }
    }

    pub(super) fn control_pad_template(caps: &gst::Caps) -> gst::PadTemplate {
        gst::PadTemplate::new(
            "control_%u",
            gst::PadDirection::Sink,
            gst::PadPresence::Request,
            caps,
        )
        .unwrap()
    }

    /// A new `control_N` pad (N = the ControlNet it feeds; the next free one when not
    /// named).
    pub(super) fn request_control_pad(
        &self,
        templ: &gst::PadTemplate,
        name: Option<&str>,
    ) -> Option<gst::Pad> {
        let mut inner = self.control.0.lock().unwrap();
        let taken = |i: usize| inner.pads.iter().any(|s| s.index == i);
        let index = match name {
            Some(n) => {
                let i = n.strip_prefix("control_")?.parse::<usize>().ok()?;
                if taken(i) {
                    gst::warning!(CAT, imp = self, "pad {n} exists already");
                    return None;
                }
                i
            }
            None => (0..).find(|&i| !taken(i)).expect("a free index"),
        };
        let pad = gst::Pad::builder_from_template(templ)
            .name(format!("control_{index}"))
            .chain_function(move |pad, parent, buffer| {
                I2iTransform::catch_panic_pad_function(
                    parent,
                    || Err(gst::FlowError::Error),
                    |imp| imp.control_chain(pad, buffer),
                )
            })
            .event_function(|pad, parent, event| {
                I2iTransform::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.control_event(pad, event),
                )
            })
            .build();
        inner.pads.push(PadSlot {
            pad: pad.clone(),
            index,
            conv: None,
            segment: gst::FormattedSegment::new(),
            frames: VecDeque::new(),
        });
        drop(inner);
        pad.set_active(true).ok()?;
        self.obj().add_pad(&pad).ok()?;
        Some(pad)
    }

    pub(super) fn release_control_pad(&self, pad: &gst::Pad) {
        self.control
            .0
            .lock()
            .unwrap()
            .pads
            .retain(|s| &s.pad != pad);
        let _ = pad.set_active(false);
        let _ = self.obj().remove_pad(pad);
    }

    /// The RGB converter of a side pad (`control_N`, `ipadapter`) for new `caps`, to the
    /// size and resize mode `target` gives for the caps' video info; a negotiation ERROR
    /// naming the pad when the caps cannot be converted.
    pub(super) fn side_pad_converter(
        &self,
        pad: &gst::Pad,
        caps: gst::Caps,
        target: impl FnOnce(&gst_video::VideoInfo) -> (u32, u32, ResizeMode),
    ) -> Option<InputConverter> {
        let res = gst_video::VideoInfo::from_caps(&caps)
            .map_err(|e| e.to_string())
            .and_then(|info| {
                let (w, h, mode) = target(&info);
                InputConverter::new(&info, w, h, mode, converter_threads())
            });
        res.map_err(|e| {
            gst::element_imp_error!(
                self,
                gst::CoreError::Negotiation,
                ("{}: caps {} refused: {}", pad.name(), caps, e)
            );
        })
        .ok()
    }

    fn control_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        match event.view() {
            gst::EventView::Caps(c) => {
                let target = || {
                    let s = self.settings.lock().unwrap();
                    let size = self.control.0.lock().unwrap().size;
                    let (w, h) = size.unwrap_or((s.width, s.height));
                    (w, h, s.stream.resize_mode)
                };
                let Some(conv) = self.side_pad_converter(pad, c.caps_owned(), |_| target()) else {
                    return false;
                };
                let mut inner = self.control.0.lock().unwrap();
                if let Some(slot) = inner.pads.iter_mut().find(|s| &s.pad == pad) {
                    slot.conv = Some(conv);
                }
                true
            }
            gst::EventView::Segment(s) => {
                if let Ok(seg) = s.segment().clone().downcast::<gst::ClockTime>() {
                    let mut inner = self.control.0.lock().unwrap();
                    if let Some(slot) = inner.pads.iter_mut().find(|s| &s.pad == pad) {
                        slot.segment = seg;
                    }
                }
                true
            }
            gst::EventView::FlushStop(_) => {
                let mut inner = self.control.0.lock().unwrap();
                if let Some(slot) = inner.pads.iter_mut().find(|s| &s.pad == pad) {
                    slot.frames.clear();
                }
                true
            }
            // The control stream's EOS, stream-start and the like stop here: the main
            // stream decides when the output ends.
            _ => true,
        }
    }

    fn control_chain(
        &self,
        pad: &gst::Pad,
        buffer: gst::Buffer,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let mut inner = self.control.0.lock().unwrap();
        let Some(slot) = inner.pads.iter_mut().find(|s| &s.pad == pad) else {
            return Err(gst::FlowError::Flushing);
        };
        let Some(conv) = slot.conv.as_ref() else {
            drop(inner);
            gst::element_imp_error!(
                self,
                gst::CoreError::Negotiation,
                ["{}: a buffer before any caps", pad.name()]
            );
            return Err(gst::FlowError::NotNegotiated);
        };
        match conv.convert(buffer.as_ref()) {
            Ok(rgb) => {
                let rt = slot.segment.to_running_time(buffer.pts());
                let size = conv.model_size();
                slot.frames.push_back((rt, (Arc::new(rgb), size)));
                while slot.frames.len() > PAD_FRAMES {
                    slot.frames.pop_front();
                }
            }
            Err(e) => {
                drop(inner);
                gst::element_imp_warning!(
                    self,
                    gst::StreamError::Decode,
                    [
                        "{}: dropping control frame (pts {:?}): {}",
                        pad.name(),
                        buffer.pts(),
                        e
                    ]
                );
            }
        }
        Ok(gst::FlowSuccess::Ok)
    }
}
