// SPDX-License-Identifier: MPL-2.0
//! The transform's conditioning beyond the prompt: temporal latent feedback
//! (`latent-feedback`) and ControlNet (`controlnet-scales`, `controlnet-preprocess`).
//!
//! Kept apart from the prompt settings ([`super::live`]) because they do not travel on the
//! settings link: they are properties, live, handed to the engine before each batch.

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::imp::{CAT, I2iTransform};
use super::task::Worker;

const DEFAULT_LATENT_FEEDBACK: f64 = 0.0;

/// The property names handled here.
pub(super) const PROPERTIES: &[&str] = &["latent-feedback"];

#[derive(Debug, Clone, PartialEq)]
pub(super) struct ControlSettings {
    /// Temporal feedback `s`: `(1 - s) * z_in + s * z_prev`; 0 = off.
    pub latent_feedback: f64,
}

impl Default for ControlSettings {
    fn default() -> Self {
        ControlSettings {
            latent_feedback: DEFAULT_LATENT_FEEDBACK,
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
    ]
}

impl ControlSettings {
    pub fn set_property(&mut self, name: &str, value: &glib::Value) -> Result<(), String> {
        match name {
            "latent-feedback" => self.latent_feedback = value.get::<f64>().unwrap(),
            _ => unreachable!("property {name} is not a control property"),
        }
        Ok(())
    }

    pub fn property(&self, name: &str) -> glib::Value {
        match name {
            "latent-feedback" => self.latent_feedback.to_value(),
            _ => unreachable!("property {name} is not a control property"),
        }
    }
}

impl I2iTransform {
    /// Hands the engine the control settings for the next batch.
    pub(super) fn apply_control(&self, w: &mut Worker) {
        let c = self.settings.lock().unwrap().control.clone();
        let s = c.latent_feedback as f32;
        if w.engine.latent_feedback() != s {
            gst::debug!(CAT, imp = self, "latent feedback {s}");
            w.engine.set_latent_feedback(s);
        }
    }
}
