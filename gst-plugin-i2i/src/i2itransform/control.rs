// SPDX-License-Identifier: MPL-2.0
//! The transform's conditioning beyond the prompt: temporal latent feedback
//! (`latent-feedback`) and ControlNet (`controlnet-scales`, `controlnet-preprocess`, the
//! `control_%u` request pads).
//!
//! Kept apart from the prompt settings ([`super::live`]) because they do not travel on the
//! settings link: they are properties, handed to the engine before each batch. The control
//! images are made on the streaming thread, where the frame is converted, so the inference
//! thread only runs model calls. This module holds the settings and the state the threads
//! share; what the element does with them is [`super::control_pads`].
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

use crate::infer::convert::InputConverter;
use crate::preprocess::depth::DepthModel;
use crate::preprocess::{self, Preprocess};

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

pub(super) fn format_scales(s: &[f32]) -> String {
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
pub(super) type PadFrame = (Arc<Vec<u8>>, (u32, u32));

/// One control pad's converter, segment and newest frames.
pub(super) struct PadSlot {
    pub(super) pad: gst::Pad,
    /// ControlNet index (the N of `control_N`).
    pub(super) index: usize,
    pub(super) conv: Option<InputConverter>,
    pub(super) segment: gst::FormattedSegment<gst::ClockTime>,
    /// (running time, packed RGB8 at the model size), oldest first.
    pub(super) frames: VecDeque<(Option<gst::ClockTime>, PadFrame)>,
}

/// What the streaming threads share about the control images.
#[derive(Default)]
pub(super) struct Inner {
    /// One per ControlNet of the loaded model (resolved from `controlnet-preprocess`).
    pub(super) preprocess: Vec<Preprocess>,
    /// The newest output (packed RGB8 at the model size), kept when a `feedback`
    /// preprocessor needs it.
    pub(super) last_output: Option<Arc<Vec<u8>>>,
    pub(super) pads: Vec<PadSlot>,
    /// The model size while running.
    pub(super) size: Option<(u32, u32)>,
    /// Frames that had no control picture from their pad and used the frame itself.
    pub(super) fallbacks: u64,
    /// The scales last refused, so that the same refusal is reported once.
    pub(super) refused_scales: Option<Vec<f32>>,
    /// The `depth` preprocessor's model.
    pub(super) depth: Option<DepthModel>,
}

#[derive(Default)]
pub(super) struct ControlState(pub(super) Mutex<Inner>);

impl ControlState {
    pub fn fallbacks(&self) -> u64 {
        self.0.lock().unwrap().fallbacks
    }
}

/// One value for every ControlNet, or one each.
pub(super) fn per_controlnet<T: Clone>(
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

/// The control frame for ControlNet `k` at main running time `rt` (see the module notes).
pub(super) fn pad_frame(
    pads: &[PadSlot],
    k: usize,
    rt: Option<gst::ClockTime>,
) -> Option<PadFrame> {
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
