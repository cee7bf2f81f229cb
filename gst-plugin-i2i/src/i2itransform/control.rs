// SPDX-License-Identifier: MPL-2.0
//! The transform's conditioning beyond the prompt: temporal latent feedback
//! (`latent-feedback`) and ControlNet (`controlnet-scales`, `controlnet-preprocess`, the
//! `control_%u` request pads).
//!
//! Kept apart from the prompt settings ([`super::live`]) because they do not travel on the
//! settings link: they are properties, handed to the engine before each batch. The control
//! images are made on the streaming thread, where the frame is converted
//! ([`I2iTransform::prepare_control`]), so the inference thread only runs model calls.
//!
//! Control pads: `control_N` feeds ControlNet N when its preprocessor is `pad`. Its frames
//! are converted to RGB at the model size (with `resize-mode`) as they arrive and kept (the
//! newest [`PAD_FRAMES`]); each main frame takes the newest control frame whose running time
//! is not later than its own. When every kept frame is later (the control stream is ahead by
//! more than the kept frames), the oldest kept one is used; before the first control frame,
//! or with no such pad linked, the main frame itself is used (as `input`) and counted in the
//! `control-fallbacks` statistic.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::imp::{CAT, I2iTransform};
use super::task::Worker;
use crate::diffusion::{Engine, PreparedFrame};
use crate::infer::convert::{InputConverter, converter_threads};
use crate::infer::pads::InferElementExt;
use crate::preprocess::depth::DepthModel;
use crate::preprocess::{self, Preprocess};
use imageproc::image::{RgbImage, imageops};

const DEFAULT_LATENT_FEEDBACK: f64 = 0.0;
/// Largest accepted ControlNet scale (diffusers' pipelines take any float; beyond this
/// the residuals swamp the UNet).
const MAX_CONTROLNET_SCALE: f32 = 10.0;
/// Control frames kept per pad for timestamp matching.
pub(super) const PAD_FRAMES: usize = 8;

/// The property names handled here.
pub(super) const PROPERTIES: &[&str] = &[
    "latent-feedback",
    "controlnet-scales",
    "controlnet-preprocess",
    "depth-model",
];

#[derive(Debug, Clone, PartialEq)]
pub(super) struct ControlSettings {
    /// Temporal feedback `s`: `(1 - s) * z_in + s * z_prev`; 0 = off.
    pub latent_feedback: f64,
    /// One per ControlNet, or one for all; empty = 1 for each.
    pub controlnet_scales: Vec<f32>,
    /// One per ControlNet, or one for all; empty = `input` for each.
    pub preprocess: Vec<Preprocess>,
    /// The image-to-depth ONNX file of the `depth` preprocessor.
    pub depth_model: Option<String>,
    /// Values refused while the element was stopped (property, message): the start fails
    /// with them, since gst-launch-1.0 sets properties before it watches the bus.
    pub refused: Vec<(String, String)>,
}

impl Default for ControlSettings {
    fn default() -> Self {
        ControlSettings {
            latent_feedback: DEFAULT_LATENT_FEEDBACK,
            controlnet_scales: Vec::new(),
            preprocess: Vec::new(),
            depth_model: None,
            refused: Vec::new(),
        }
    }
}

pub(super) fn param_specs() -> Vec<glib::ParamSpec> {
    vec![
        glib::ParamSpecDouble::builder("latent-feedback")
            .nick("Latent feedback")
            .blurb("Temporal feedback against flicker: each frame starts from (1 - s) * its own latent + s * the newest output's latent; 0 = off (frames independent), 0.15 to 0.3 steadies a static scene")
            .minimum(0.0)
            .maximum(1.0)
            .default_value(DEFAULT_LATENT_FEEDBACK)
            .mutable_playing()
            .controllable()
            .build(),
        glib::ParamSpecString::builder("controlnet-scales")
            .nick("ControlNet scales")
            .blurb("ControlNet models: one conditioning scale per ControlNet, comma-separated (\"1.0,0.5\"), or one for all; 0 turns a ControlNet off without reloading; empty = 1 each")
            .default_value(Some(""))
            .mutable_playing()
            .build(),
        glib::ParamSpecString::builder("controlnet-preprocess")
            .nick("ControlNet preprocessors")
            .blurb("ControlNet models: what each ControlNet sees, comma-separated, or one for all: input (the frame), canny[:LOW:HIGH] (edges, default 100:200), feedback[:WEIGHT] (the previous output blended with the frame, default 0.5), depth (depth-model's map of the frame), pad (the control_N pad); empty = input")
            .default_value(Some(""))
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder("depth-model")
            .nick("Depth model")
            .blurb("An image-to-depth ONNX file (a Depth-Anything or MiDaS export: float [1, 3, H, W] in, [1, H, W] out) for the depth ControlNet preprocessor; runs on the model's execution provider")
            .mutable_ready()
            .build(),
    ]
}

/// `"1.0, 0.5"` -> `[1.0, 0.5]`; empty -> `[]`.
pub(super) fn parse_scales(text: &str) -> Result<Vec<f32>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|v| {
            v.trim()
                .parse::<f32>()
                .ok()
                .filter(|x| (0.0..=MAX_CONTROLNET_SCALE).contains(x))
                .ok_or_else(|| {
                    format!(
                        "controlnet-scales \"{text}\" refused: \"{}\" is not a number from 0 to {MAX_CONTROLNET_SCALE}",
                        v.trim()
                    )
                })
        })
        .collect()
}

fn format_scales(s: &[f32]) -> String {
    s.iter().map(f32::to_string).collect::<Vec<_>>().join(",")
}

impl ControlSettings {
    /// `stopped`: a refused value is kept for the start to fail with.
    pub fn set_property(
        &mut self,
        name: &str,
        value: &glib::Value,
        stopped: bool,
    ) -> Result<(), String> {
        self.refused.retain(|(n, _)| n != name);
        let res = self.set(name, value);
        if let Err(e) = &res
            && stopped
        {
            self.refused.push((name.to_string(), e.clone()));
        }
        res
    }

    fn set(&mut self, name: &str, value: &glib::Value) -> Result<(), String> {
        let text = || value.get::<Option<String>>().unwrap().unwrap_or_default();
        match name {
            "latent-feedback" => self.latent_feedback = value.get::<f64>().unwrap(),
            "controlnet-scales" => self.controlnet_scales = parse_scales(&text())?,
            "controlnet-preprocess" => {
                self.preprocess = preprocess::parse_list(&text())
                    .map_err(|e| format!("controlnet-preprocess refused: {e}"))?
            }
            "depth-model" => self.depth_model = Some(text()).filter(|t| !t.is_empty()),
            _ => unreachable!("property {name} is not a control property"),
        }
        Ok(())
    }

    pub fn property(&self, name: &str) -> glib::Value {
        match name {
            "latent-feedback" => self.latent_feedback.to_value(),
            "controlnet-scales" => format_scales(&self.controlnet_scales).to_value(),
            "controlnet-preprocess" => preprocess::format_list(&self.preprocess).to_value(),
            "depth-model" => self.depth_model.to_value(),
            _ => unreachable!("property {name} is not a control property"),
        }
    }
}

/// A control frame: packed RGB8 and its size (the model size when it was converted).
type PadFrame = (Arc<Vec<u8>>, (u32, u32));

/// One control pad's converter, segment and newest frames.
struct PadSlot {
    pad: gst::Pad,
    /// ControlNet index (the N of `control_N`).
    index: usize,
    conv: Option<InputConverter>,
    segment: gst::FormattedSegment<gst::ClockTime>,
    /// (running time, packed RGB8 at the model size), oldest first.
    frames: VecDeque<(Option<gst::ClockTime>, PadFrame)>,
}

/// What the streaming threads share about the control images.
#[derive(Default)]
struct Inner {
    /// One per ControlNet of the loaded model (resolved from `controlnet-preprocess`).
    preprocess: Vec<Preprocess>,
    /// The newest output (packed RGB8 at the model size), kept when a `feedback`
    /// preprocessor needs it.
    last_output: Option<Arc<Vec<u8>>>,
    pads: Vec<PadSlot>,
    /// The model size while running.
    size: Option<(u32, u32)>,
    /// Frames that had no control picture from their pad and used the frame itself.
    fallbacks: u64,
    /// The scales last refused, so that the same refusal is reported once.
    refused_scales: Option<Vec<f32>>,
    /// The `depth` preprocessor's model.
    depth: Option<DepthModel>,
}

#[derive(Default)]
pub(super) struct ControlState(Mutex<Inner>);

impl ControlState {
    pub fn fallbacks(&self) -> u64 {
        self.0.lock().unwrap().fallbacks
    }
}

/// One value for every ControlNet, or one each.
fn per_controlnet<T: Clone>(
    list: &[T],
    num: usize,
    default: T,
    what: &str,
) -> Result<Vec<T>, String> {
    match list.len() {
        0 => Ok(vec![default; num]),
        1 => Ok(vec![list[0].clone(); num]),
        n if n == num => Ok(list.to_vec()),
        n => Err(format!(
            "{what} has {n} values but the model has {num} ControlNet(s): give one value for all or one per ControlNet"
        )),
    }
}

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

    fn control_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        match event.view() {
            gst::EventView::Caps(c) => {
                let caps = c.caps_owned();
                let res = gst_video::VideoInfo::from_caps(&caps)
                    .map_err(|e| e.to_string())
                    .and_then(|info| {
                        let (size, mode) = {
                            let s = self.settings.lock().unwrap();
                            let size = self.control.0.lock().unwrap().size;
                            (size.unwrap_or((s.width, s.height)), s.stream.resize_mode)
                        };
                        InputConverter::new(&info, size.0, size.1, mode, converter_threads())
                    });
                match res {
                    Ok(conv) => {
                        let mut inner = self.control.0.lock().unwrap();
                        if let Some(slot) = inner.pads.iter_mut().find(|s| &s.pad == pad) {
                            slot.conv = Some(conv);
                        }
                        true
                    }
                    Err(e) => {
                        gst::element_imp_error!(
                            self,
                            gst::CoreError::Negotiation,
                            ("{}: caps {} refused: {}", pad.name(), caps, e)
                        );
                        false
                    }
                }
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

/// The control frame for ControlNet `k` at main running time `rt` (see the module notes).
fn pad_frame(pads: &[PadSlot], k: usize, rt: Option<gst::ClockTime>) -> Option<PadFrame> {
    let slot = pads.iter().find(|s| s.index == k)?;
    let newest_not_later = slot
        .frames
        .iter()
        .rev()
        .find(|(t, _)| match (t, rt) {
            (Some(t), Some(rt)) => *t <= rt,
            // Without timestamps on either side: the newest.
            _ => true,
        })
        .or_else(|| slot.frames.front())?;
    Some(newest_not_later.1.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_parse_and_expand() {
        assert_eq!(parse_scales("").unwrap(), Vec::<f32>::new());
        assert_eq!(parse_scales(" 1.0, 0.5 ").unwrap(), [1.0, 0.5]);
        assert_eq!(parse_scales("0").unwrap(), [0.0]);
        for bad in ["a", "1,,2", "-0.5", "11", "nan"] {
            let e = parse_scales(bad).unwrap_err();
            assert!(
                e.contains("controlnet-scales") && e.contains("0 to 10"),
                "{bad}: {e}"
            );
        }
        assert_eq!(format_scales(&[1.0, 0.5]), "1,0.5");
        assert_eq!(
            per_controlnet(&[], 2, 1.0f32, "controlnet-scales").unwrap(),
            [1.0, 1.0]
        );
        assert_eq!(
            per_controlnet(&[0.3], 3, 1.0f32, "controlnet-scales").unwrap(),
            [0.3, 0.3, 0.3]
        );
        let e = per_controlnet(&[1.0, 2.0, 3.0], 2, 1.0f32, "controlnet-scales").unwrap_err();
        assert!(e.contains("3 values") && e.contains("2 ControlNet"), "{e}");
    }

    #[test]
    fn a_refused_value_is_kept_for_the_start_only_when_stopped() {
        let mut c = ControlSettings::default();
        let bad = "x".to_value();
        assert!(c.set_property("controlnet-scales", &bad, false).is_err());
        assert!(
            c.refused.is_empty(),
            "while running the old value just stays"
        );
        assert!(c.set_property("controlnet-scales", &bad, true).is_err());
        assert_eq!(c.refused.len(), 1);
        c.set_property("controlnet-scales", &"0.5".to_value(), true)
            .unwrap();
        assert!(
            c.refused.is_empty(),
            "a good value replaces the refused one"
        );
        assert_eq!(
            c.property("controlnet-scales").get::<String>().unwrap(),
            "0.5"
        );
    }
}
