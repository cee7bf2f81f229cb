// SPDX-License-Identifier: MPL-2.0
//! The transform's live settings, free of GStreamer: the snapshot the stream runs with,
//! updates from the `settings` pad, and the list of what changed between two snapshots.
//!
//! The accepted ranges and names are those of [`i2i_core::settings`] (one place for chat
//! commands, messages, the pad and the properties); this module only adds what depends on
//! the transform itself (t-indices below its `num-inference-steps`). Every error names the
//! setting and the refused value, so that a bus warning tells the user what to fix; a
//! refused change leaves the previous value in place.

use std::path::Path;

use crate::diffusion::StreamParams;

use i2i_core::settings::command::{Command, parse_line};
use i2i_core::settings::{self, SettingsUpdate};

pub use i2i_core::settings::format_t_index_list;

/// What the stream runs with and may change while it runs: the engine's parameters
/// (blends and transitions included: the engine owns the conditioning and the noise).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LiveSettings {
    pub params: StreamParams,
}

/// `"32,45"` -> `[32, 45]`: [`settings::parse_t_index_list`], with every index below
/// `num_inference_steps`; the error quotes the whole text.
pub fn parse_t_index_list(text: &str, num_inference_steps: u32) -> Result<Vec<u32>, String> {
    settings::parse_t_index_list_below(text, num_inference_steps)
        .map_err(|e| format!("t-index-list \"{text}\" refused: {e}"))
}

/// Reads a `prompt-blend` or `seed-blend` property value, written as after `/blend` and
/// `/seedblend` (`"a red fox":0.7 "oil painting":0.3`, `1:0.5 2:0.5`; empty or `off` ends
/// the blend; a leading `linear` or `slerp` sets `blend-mode` too), as an update.
pub fn blend_property_update(name: &str, text: &str) -> Result<SettingsUpdate, String> {
    let command = if name == "prompt-blend" {
        "/blend"
    } else {
        "/seedblend"
    };
    match parse_line(&format!("{command} {text}")) {
        Ok(Command::Update(u)) => Ok(u),
        Ok(_) => Err(format!("{name} \"{text}\" refused: not a blend")),
        Err(e) => Err(format!("{name} \"{text}\" refused: {e}")),
    }
}

/// The `prompt-blend` property's text: `"a red fox":0.7 "oil painting":0.3`.
pub fn format_prompt_blend(b: &Option<Vec<(String, f64)>>) -> String {
    let Some(b) = b else { return String::new() };
    b.iter()
        .map(|(t, w)| {
            let quoted = t.replace('\\', "\\\\").replace('"', "\\\"");
            format!("\"{quoted}\":{w}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `seed-blend` property's text: `1:0.5 2:0.5`.
pub fn format_seed_blend(b: &Option<Vec<(u64, f64)>>) -> String {
    let Some(b) = b else { return String::new() };
    b.iter()
        .map(|(s, w)| format!("{s}:{w}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A float32 setting as the float64 people wrote (1.2, not 1.2000000476837158).
fn reported(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(f64::from(v))
}

impl LiveSettings {
    /// Applies an update from the settings pad, all or nothing: the first invalid field
    /// refuses the whole update. Returns the names of the settings that changed.
    pub fn apply_update(&mut self, u: &SettingsUpdate) -> Result<Vec<&'static str>, String> {
        u.validate()?;
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
            settings::check_t_index_list_below(t, next.params.num_inference_steps)
                .map_err(|e| format!("t-index-list \"{}\" refused: {e}", format_t_index_list(t)))?;
            next.params.t_index_list = t.clone();
        }
        // After the list: a strength moves the list this update lands on.
        if let Some(s) = u.strength {
            next.params.t_index_list = settings::shift_t_index_list(
                &next.params.t_index_list,
                s,
                next.params.num_inference_steps,
            )?;
        }
        if let Some(g) = u.guidance_scale {
            next.params.guidance_scale = g as f32;
        }
        if let Some(d) = u.delta {
            next.params.delta = d as f32;
        }
        if let Some(c) = u.cfg_type {
            next.params.cfg_type = c;
        }
        if let Some(s) = u.similarity_threshold {
            next.params.similarity_threshold = s as f32;
        }
        if let Some(t) = u.transition_frames {
            next.params.transition_frames = t;
        }
        if let Some(b) = &u.prompt_blend {
            next.params.prompt_blend = (!b.is_empty()).then(|| b.clone());
        }
        if let Some(b) = &u.seed_blend {
            next.params.seed_blend = (!b.is_empty()).then(|| b.clone());
        }
        if let Some(m) = u.blend_mode {
            next.params.blend_mode = m;
        }
        if let Some(l) = &u.lora {
            let list = settings::lora::parse_lora_list(l)?;
            next.params.lora = settings::lora::format_lora_list(&list);
        }
        let changed = self.changed(&next);
        *self = next;
        Ok(changed)
    }

    /// Applies the valid keys of an update and refuses only the invalid ones (a bad
    /// t-index list must not cost a late joiner its prompt and seed). Returns the settings
    /// that changed and one message per refused key.
    pub fn apply_valid(&mut self, u: &SettingsUpdate) -> (Vec<&'static str>, Vec<String>) {
        let (mut changed, mut refused) = (Vec::new(), Vec::new());
        for (_, one) in u.split_keys() {
            match self.apply_update(&one) {
                Ok(names) => {
                    for n in names {
                        if !changed.contains(&n) {
                            changed.push(n);
                        }
                    }
                }
                Err(e) => refused.push(e),
            }
        }
        (changed, refused)
    }

    /// Every setting that travels on the settings link, as an update (for reports).
    pub fn to_update(&self) -> SettingsUpdate {
        let p = &self.params;
        SettingsUpdate {
            prompt: Some(p.prompt.clone()),
            negative_prompt: Some(p.negative_prompt.clone()),
            seed: Some(p.seed),
            t_index_list: Some(p.t_index_list.clone()),
            guidance_scale: Some(reported(p.guidance_scale)),
            delta: Some(reported(p.delta)),
            cfg_type: Some(p.cfg_type),
            similarity_threshold: Some(reported(p.similarity_threshold)),
            transition_frames: Some(self.params.transition_frames),
            prompt_blend: Some(self.params.prompt_blend.clone().unwrap_or_default()),
            seed_blend: Some(self.params.seed_blend.clone().unwrap_or_default()),
            blend_mode: Some(self.params.blend_mode),
            // Relative: resolved into t-index-list, never reported.
            strength: None,
            lora: Some(p.lora.clone()),
            // The IP-Adapter's settings live beside these (ipadapter_pad.rs).
            ip_adapter_image: None,
            ip_adapter_scale: None,
        }
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
            a.transition_frames != b.transition_frames,
            "transition-frames",
        );
        check(a.prompt_blend != b.prompt_blend, "prompt-blend");
        check(a.seed_blend != b.seed_blend, "seed-blend");
        check(a.blend_mode != b.blend_mode, "blend-mode");
        check(a.lora != b.lora, "lora");
        out
    }
}

/// The property that confines the files settings name.
pub const SETTINGS_FOLDER: &str = "settings-folder";

/// Confines the files an update from the settings pad names (the style picture, the LoRA
/// files) to `folder`, the `settings-folder` property: each path becomes the file it
/// stands for (relative paths start at the folder), and a key naming a path that is not
/// read (no folder, outside it, missing) is taken out of the update, with one refusal per
/// key naming the path and the property. Empty values (`/style off`, `/lora off`) name no
/// file. The properties, set by the operator, are not confined: only this pad's values.
pub fn confine_files(u: &mut SettingsUpdate, folder: Option<&Path>) -> Vec<String> {
    let resolve = |p: &Path| {
        i2i_core::files::resolve_under(p, folder, SETTINGS_FOLDER).map_err(|e| e.to_string())
    };
    let mut refused = Vec::new();
    if let Some(image) = u.ip_adapter_image.take() {
        if image.is_empty() {
            u.ip_adapter_image = Some(image);
        } else {
            match resolve(Path::new(&image)) {
                Ok(p) => u.ip_adapter_image = Some(p.display().to_string()),
                Err(e) => refused.push(format!("ip-adapter-image: {e}")),
            }
        }
    }
    if let Some(text) = u.lora.take() {
        // A list that does not parse is refused, naming it, where it is applied.
        match settings::lora::parse_lora_list(&text) {
            Err(_) => u.lora = Some(text),
            Ok(list) => {
                let resolved: Result<Vec<_>, String> = list
                    .into_iter()
                    .map(|(p, scale)| resolve(&p).map(|p| (p, scale)))
                    .collect();
                match resolved {
                    Ok(list) => u.lora = Some(settings::lora::format_lora_list(&list)),
                    Err(e) => refused.push(format!("lora \"{text}\": {e}")),
                }
            }
        }
    }
    refused
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::CfgType;
    use i2i_core::settings::blend::BlendMode;

    #[test]
    fn t_index_list_parses_and_formats() {
        assert_eq!(parse_t_index_list("32,45", 50).unwrap(), vec![32, 45]);
        assert_eq!(
            parse_t_index_list(" 0 , 10,49 ", 50).unwrap(),
            vec![0, 10, 49]
        );
        assert_eq!(format_t_index_list(&[32, 45]), "32,45");
        assert_eq!(parse_t_index_list("3", 4).unwrap(), vec![3]);
        // The chat command's forms are accepted here too.
        assert_eq!(
            parse_t_index_list("22 32, 45", 50).unwrap(),
            vec![22, 32, 45]
        );
    }

    #[test]
    fn bad_t_index_lists_name_the_value() {
        for (text, needle) in [
            ("a,b", "\"a\" is not a t-index"),
            ("", "empty"),
            (
                "50",
                "t-index 50 is out of range: num-inference-steps is 50",
            ),
            ("45,32", "must increase"),
            ("32,32", "must increase"),
            ("-1", "\"-1\""),
            ("1000", "t-index 1000 is out of range"),
        ] {
            let e = parse_t_index_list(text, 50).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
            assert!(e.contains(&format!("\"{text}\"")), "{text}: {e}");
        }
    }

    #[test]
    fn cfg_type_nicks_round_trip() {
        for c in CfgType::ALL {
            assert_eq!(CfgType::parse(c.nick()).unwrap(), c);
        }
        assert!(CfgType::parse("half").unwrap_err().contains("\"half\""));
    }

    #[test]
    fn files_named_by_settings_are_confined_to_the_folder() {
        let dir = std::env::temp_dir().join(format!("i2i-live-confine-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("styles/loras")).unwrap();
        std::fs::write(dir.join("styles/ink.png"), b"x").unwrap();
        std::fs::write(dir.join("styles/loras/a.onnx_adapter"), b"x").unwrap();
        std::fs::write(dir.join("secret"), b"x").unwrap();
        let folder = dir.join("styles");
        let root = folder.canonicalize().unwrap();
        let update = |image: &str, lora: &str| SettingsUpdate {
            seed: Some(3),
            ip_adapter_image: Some(image.into()),
            lora: Some(lora.into()),
            ..Default::default()
        };

        let mut u = update("ink.png", "loras/a.onnx_adapter:0.5");
        assert!(confine_files(&mut u, Some(&folder)).is_empty());
        assert_eq!(
            u.ip_adapter_image.unwrap(),
            root.join("ink.png").display().to_string()
        );
        let a = root.join("loras/a.onnx_adapter");
        assert_eq!(u.lora.unwrap(), format!("{}:0.5", a.display()));

        // One file of the list outside: the whole list is refused; the other keys stay.
        let mut u = update("../secret", "loras/a.onnx_adapter,../secret:0.3");
        let refused = confine_files(&mut u, Some(&folder));
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(refused[0].starts_with("ip-adapter-image: \"../secret\""));
        assert!(refused[1].starts_with("lora \"loras/a.onnx_adapter,../secret:0.3\""));
        assert!(
            refused
                .iter()
                .all(|r| r.contains("outside settings-folder"))
        );
        assert_eq!((u.ip_adapter_image, u.lora, u.seed), (None, None, Some(3)));

        // No folder: every file refused, naming the property; off names no file.
        let mut u = update("ink.png", "a.onnx_adapter");
        let refused = confine_files(&mut u, None);
        assert!(
            refused
                .iter()
                .all(|r| r.contains("settings-folder property, which is not set")),
            "{refused:?}"
        );
        let mut u = update("", "off");
        assert!(confine_files(&mut u, None).is_empty());
        assert_eq!(
            (u.ip_adapter_image.unwrap(), u.lora.unwrap()),
            ("".into(), "".into())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn valid_keys_apply_and_only_bad_ones_are_refused() {
        let mut s = LiveSettings::default();
        let (changed, refused) = s.apply_valid(&SettingsUpdate {
            prompt: Some("a red fox".into()),
            seed: Some(77),
            t_index_list: Some(vec![10, 60]),
            ..Default::default()
        });
        assert_eq!(changed, vec!["prompt", "seed"]);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(refused[0].contains("t-index 60"), "{refused:?}");
        assert_eq!(s.params.prompt, "a red fox");
        assert_eq!(s.params.seed, 77);
    }

    #[test]
    fn update_is_all_or_nothing() {
        let mut s = LiveSettings::default();
        let bad = SettingsUpdate {
            prompt: Some("a cat".into()),
            t_index_list: Some(vec![20, 10]),
            ..Default::default()
        };
        let e = s.apply_update(&bad).unwrap_err();
        assert!(e.contains("20,10"), "{e}");
        assert_eq!(s, LiveSettings::default());

        for (u, needle) in [
            (
                SettingsUpdate {
                    guidance_scale: Some(f64::NAN),
                    ..Default::default()
                },
                "guidance-scale: NaN",
            ),
            (
                SettingsUpdate {
                    delta: Some(-0.5),
                    ..Default::default()
                },
                "delta: -0.5 is out of range",
            ),
            (
                SettingsUpdate {
                    transition_frames: Some(100_000),
                    ..Default::default()
                },
                "transition-frames: 100000",
            ),
            (
                SettingsUpdate {
                    prompt_blend: Some(vec![("a".into(), 0.0)]),
                    ..Default::default()
                },
                "prompt-blend: the weights add up to 0",
            ),
        ] {
            let e = s.apply_update(&u).unwrap_err();
            assert!(e.contains(needle), "{e}");
            assert_eq!(s, LiveSettings::default());
        }

        let changed = s
            .apply_update(&SettingsUpdate {
                prompt: Some("a cat".into()),
                seed: Some(7),
                cfg_type: Some(CfgType::Full),
                t_index_list: Some(vec![10, 20, 30]),
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
    fn blends_are_kept_without_empty_lists() {
        let mut s = LiveSettings::default();
        let changed = s
            .apply_update(&SettingsUpdate {
                prompt_blend: Some(vec![("a fox".into(), 0.7), ("oil".into(), 0.3)]),
                seed_blend: Some(vec![(1, 1.0), (2, 1.0)]),
                blend_mode: Some(BlendMode::Slerp),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(changed, vec!["prompt-blend", "seed-blend", "blend-mode"]);
        assert_eq!(s.params.blend_mode, BlendMode::Slerp);
        assert_eq!(
            format_prompt_blend(&s.params.prompt_blend),
            "\"a fox\":0.7 \"oil\":0.3"
        );
        assert_eq!(format_seed_blend(&s.params.seed_blend), "1:1 2:1");
        // An empty list ends a blend; ending it again is no change.
        let off = SettingsUpdate {
            prompt: Some("fox".into()),
            ..Default::default()
        }
        .with_explicit_blend_clears();
        assert_eq!(
            s.apply_update(&off).unwrap(),
            vec!["prompt", "prompt-blend"]
        );
        assert_eq!(s.params.prompt_blend, None);
        assert!(s.apply_update(&off).unwrap().is_empty());
        // Property text goes through the chat parser, and back.
        let u = blend_property_update("prompt-blend", r#""say \"hi\"":1 b:2"#).unwrap();
        s.apply_update(&u).unwrap();
        assert_eq!(
            s.params.prompt_blend,
            Some(vec![("say \"hi\"".into(), 1.0), ("b".into(), 2.0)])
        );
        let again =
            blend_property_update("prompt-blend", &format_prompt_blend(&s.params.prompt_blend))
                .unwrap();
        assert_eq!(again.prompt_blend, s.params.prompt_blend);
        let u = blend_property_update("seed-blend", "off").unwrap();
        s.apply_update(&u).unwrap();
        assert_eq!(s.params.seed_blend, None);
        let e = blend_property_update("seed-blend", "1:x").unwrap_err();
        assert!(e.contains("seed-blend \"1:x\" refused"), "{e}");
    }

    #[test]
    fn reports_carry_every_setting_as_written() {
        let mut s = LiveSettings::default();
        s.params.guidance_scale = 1.2;
        let u = s.to_update();
        assert_eq!(u.guidance_scale, Some(1.2));
        assert_eq!(u.prompt_blend, Some(vec![]));
        assert!(u.validate().is_ok());
        let mut t = s.clone();
        t.params.seed = 9;
        assert_eq!(t.to_update().changes_since(&u).summary(), "seed=9");
    }
}
