// SPDX-License-Identifier: MPL-2.0
//! The transform's live settings, free of GStreamer: validation shared by the properties
//! and the `settings` pad, and the list of what changed between two snapshots.
//!
//! Every check names the setting and the refused value, so that a bus warning tells the
//! user what to fix; a refused change leaves the previous value in place.

use crate::diffusion::{CfgType, StreamParams};
use crate::settings::SettingsUpdate;

/// `guidance-scale` range (1 or less turns guidance off).
pub const GUIDANCE_SCALE_MIN: f64 = 0.0;
pub const GUIDANCE_SCALE_MAX: f64 = 50.0;
/// `delta` range (the weight of the stock noise in residual CFG).
pub const DELTA_MIN: f64 = 0.0;
pub const DELTA_MAX: f64 = 10.0;
/// `similarity-threshold` range: 0 turns the filter off; 1 would divide by zero.
pub const SIMILARITY_MIN: f64 = 0.0;
pub const SIMILARITY_MAX: f64 = 0.999;
/// `num-inference-steps` range (LCM schedules use up to the 1000 training steps).
pub const STEPS_MIN: u32 = 1;
pub const STEPS_MAX: u32 = 1000;
/// More denoising steps than this is not real-time on any hardware; refuse it early.
pub const MAX_T_INDICES: usize = 50;

/// What the stream runs with and may change while it runs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LiveSettings {
    pub params: StreamParams,
    /// Frames over which a change fades in; stored and reported, applied immediately for now.
    pub transition_frames: u32,
    /// Stored for the live-control work; not applied yet.
    pub prompt_blend: Option<Vec<(String, f64)>>,
    pub seed_blend: Option<Vec<(u64, f64)>>,
}

/// `"32,45"` -> `[32, 45]`: strictly increasing indices into the `num_inference_steps`
/// LCM timesteps (higher index = less noise, so increasing means denoising forward).
pub fn parse_t_index_list(text: &str, num_inference_steps: u32) -> Result<Vec<u32>, String> {
    let bad = |why: String| format!("t-index-list \"{text}\" refused: {why}");
    if text.trim().is_empty() {
        return Err(bad(
            "it is empty; give at least one index, e.g. \"32,45\"".into()
        ));
    }
    let mut out = Vec::new();
    for piece in text.split(',') {
        let piece = piece.trim();
        let v: u32 = piece.parse().map_err(|_| {
            bad(format!(
                "\"{piece}\" is not a whole number (expected comma-separated indices like \"32,45\")"
            ))
        })?;
        if v >= num_inference_steps {
            return Err(bad(format!(
                "index {v} is out of range: num-inference-steps is {num_inference_steps}, so indices go from 0 to {}",
                num_inference_steps - 1
            )));
        }
        if let Some(&last) = out.last()
            && v <= last
        {
            return Err(bad(format!(
                "indices must increase strictly ({last} is followed by {v})"
            )));
        }
        out.push(v);
    }
    if out.len() > MAX_T_INDICES {
        return Err(bad(format!(
            "{} steps is more than the {MAX_T_INDICES} allowed",
            out.len()
        )));
    }
    Ok(out)
}

pub fn format_t_index_list(list: &[u32]) -> String {
    list.iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

pub fn cfg_type_nick(cfg: CfgType) -> &'static str {
    match cfg {
        CfgType::None => "none",
        CfgType::Full => "full",
        CfgType::SelfNegative => "self",
        CfgType::Initialize => "initialize",
    }
}

pub fn parse_cfg_type(text: &str) -> Result<CfgType, String> {
    match text.trim() {
        "none" => Ok(CfgType::None),
        "full" => Ok(CfgType::Full),
        "self" => Ok(CfgType::SelfNegative),
        "initialize" => Ok(CfgType::Initialize),
        other => Err(format!(
            "cfg-type \"{other}\" refused: expected none, full, self or initialize"
        )),
    }
}

/// Checks a numeric setting against its range; NaN and infinities are refused too.
pub fn check_range(name: &str, value: f64, min: f64, max: f64) -> Result<(), String> {
    if value.is_finite() && value >= min && value <= max {
        Ok(())
    } else {
        Err(format!(
            "{name} {value} refused: expected a value from {min} to {max}"
        ))
    }
}

impl LiveSettings {
    /// Applies an update from the settings pad, all or nothing: the first invalid field
    /// refuses the whole update. Returns the names of the settings that changed.
    pub fn apply_update(&mut self, u: &SettingsUpdate) -> Result<Vec<&'static str>, String> {
        let mut next = self.clone();
        if let Some(p) = &u.prompt {
            next.params.prompt = p.clone();
        }
        if let Some(p) = &u.negative_prompt {
            next.params.negative_prompt = p.clone();
        }
        if let Some(s) = u.seed {
            next.params.seed = s;
        }
        if let Some(t) = &u.t_index_list {
            next.params.t_index_list = parse_t_index_list(t, next.params.num_inference_steps)?;
        }
        if let Some(g) = u.guidance_scale {
            check_range("guidance-scale", g, GUIDANCE_SCALE_MIN, GUIDANCE_SCALE_MAX)?;
            next.params.guidance_scale = g as f32;
        }
        if let Some(d) = u.delta {
            check_range("delta", d, DELTA_MIN, DELTA_MAX)?;
            next.params.delta = d as f32;
        }
        if let Some(c) = &u.cfg_type {
            next.params.cfg_type = parse_cfg_type(c)?;
        }
        if let Some(s) = u.similarity_threshold {
            check_range("similarity-threshold", s, SIMILARITY_MIN, SIMILARITY_MAX)?;
            next.params.similarity_threshold = s as f32;
        }
        if let Some(t) = u.transition_frames {
            next.transition_frames = t;
        }
        if let Some(b) = &u.prompt_blend {
            if let Some((text, w)) = b.iter().find(|(_, w)| !w.is_finite() || *w < 0.0) {
                return Err(format!(
                    "prompt-blend weight {w} for \"{text}\" refused: weights must be finite and not negative"
                ));
            }
            next.prompt_blend = Some(b.clone());
        }
        if let Some(b) = &u.seed_blend {
            if let Some((seed, w)) = b.iter().find(|(_, w)| !w.is_finite() || *w < 0.0) {
                return Err(format!(
                    "seed-blend weight {w} for seed {seed} refused: weights must be finite and not negative"
                ));
            }
            next.seed_blend = Some(b.clone());
        }
        let changed = self.changed(&next);
        *self = next;
        Ok(changed)
    }

    /// Names (property names) of the settings that differ between `self` and `other`.
    pub fn changed(&self, other: &LiveSettings) -> Vec<&'static str> {
        let (a, b) = (&self.params, &other.params);
        let mut out = Vec::new();
        let mut check = |differs: bool, name: &'static str| {
            if differs {
                out.push(name);
            }
        };
        check(a.prompt != b.prompt, "prompt");
        check(a.negative_prompt != b.negative_prompt, "negative-prompt");
        check(a.seed != b.seed, "seed");
        check(a.t_index_list != b.t_index_list, "t-index-list");
        check(
            a.num_inference_steps != b.num_inference_steps,
            "num-inference-steps",
        );
        check(a.guidance_scale != b.guidance_scale, "guidance-scale");
        check(a.delta != b.delta, "delta");
        check(a.cfg_type != b.cfg_type, "cfg-type");
        check(a.add_noise != b.add_noise, "add-noise");
        check(
            a.similarity_threshold != b.similarity_threshold,
            "similarity-threshold",
        );
        check(a.max_skip_frames != b.max_skip_frames, "max-skip-frames");
        check(
            self.transition_frames != other.transition_frames,
            "transition-frames",
        );
        check(self.prompt_blend != other.prompt_blend, "prompt-blend");
        check(self.seed_blend != other.seed_blend, "seed-blend");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_index_list_parses_and_formats() {
        assert_eq!(parse_t_index_list("32,45", 50).unwrap(), vec![32, 45]);
        assert_eq!(
            parse_t_index_list(" 0 , 10,49 ", 50).unwrap(),
            vec![0, 10, 49]
        );
        assert_eq!(format_t_index_list(&[32, 45]), "32,45");
        assert_eq!(parse_t_index_list("3", 4).unwrap(), vec![3]);
    }

    #[test]
    fn bad_t_index_lists_name_the_value() {
        for (text, needle) in [
            ("a,b", "\"a\" is not a whole number"),
            ("", "empty"),
            ("32,,45", "\"\" is not a whole number"),
            ("50", "index 50 is out of range"),
            ("45,32", "must increase"),
            ("32,32", "must increase"),
            ("-1", "\"-1\""),
        ] {
            let e = parse_t_index_list(text, 50).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
            assert!(e.contains(&format!("\"{text}\"")), "{text}: {e}");
        }
    }

    #[test]
    fn cfg_type_nicks_round_trip() {
        for c in [
            CfgType::None,
            CfgType::Full,
            CfgType::SelfNegative,
            CfgType::Initialize,
        ] {
            assert_eq!(parse_cfg_type(cfg_type_nick(c)).unwrap(), c);
        }
        assert!(parse_cfg_type("half").unwrap_err().contains("\"half\""));
    }

    #[test]
    fn update_is_all_or_nothing() {
        let mut s = LiveSettings::default();
        let bad = SettingsUpdate {
            prompt: Some("a cat".into()),
            t_index_list: Some("a,b".into()),
            ..Default::default()
        };
        let e = s.apply_update(&bad).unwrap_err();
        assert!(e.contains("a,b"), "{e}");
        assert_eq!(s, LiveSettings::default());

        let e = s
            .apply_update(&SettingsUpdate {
                guidance_scale: Some(f64::NAN),
                ..Default::default()
            })
            .unwrap_err();
        assert!(e.contains("guidance-scale NaN"), "{e}");

        let changed = s
            .apply_update(&SettingsUpdate {
                prompt: Some("a cat".into()),
                seed: Some(7),
                cfg_type: Some("full".into()),
                t_index_list: Some("10,20,30".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(changed, vec!["prompt", "seed", "t-index-list", "cfg-type"]);
        assert_eq!(s.params.t_index_list, vec![10, 20, 30]);
        assert_eq!(s.params.cfg_type, CfgType::Full);
        // The same update again changes nothing.
        let changed = s
            .apply_update(&SettingsUpdate {
                prompt: Some("a cat".into()),
                ..Default::default()
            })
            .unwrap();
        assert!(changed.is_empty());
    }

    #[test]
    fn ranges_refuse_out_of_range_and_non_finite() {
        assert!(check_range("delta", 1.0, DELTA_MIN, DELTA_MAX).is_ok());
        assert!(check_range("delta", -0.5, DELTA_MIN, DELTA_MAX).is_err());
        assert!(check_range("delta", f64::INFINITY, DELTA_MIN, DELTA_MAX).is_err());
    }
}
