// SPDX-License-Identifier: MPL-2.0
//! Live settings: what travels from `settingssrc` to `i2itransform`'s `settings` pad.
//!
//! On the pad each `application/x-i2i-settings` buffer holds one [`SettingsUpdate`] as a
//! UTF-8 JSON object. Keys are the i2itransform property names; absent keys leave the
//! current value unchanged.

use serde::{Deserialize, Serialize};

/// Caps name of the buffers on the settings pad.
pub const SETTINGS_CAPS_NAME: &str = "application/x-i2i-settings";

/// A partial change of the transform's live settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SettingsUpdate {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Comma-separated, as the `t-index-list` property ("32,45").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub t_index_list: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guidance_scale: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<f64>,
    /// none, full, self or initialize.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cfg_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub similarity_threshold: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transition_frames: Option<u32>,
    /// Weighted prompt blend: `[[text, weight], ...]`; replaces `prompt` while set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_blend: Option<Vec<(String, f64)>>,
    /// Weighted seed blend: `[[seed, weight], ...]`; replaces `seed` while set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed_blend: Option<Vec<(u64, f64)>>,
}

impl SettingsUpdate {
    /// Reads one update from a settings buffer's bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("settings update is not valid: {e}"))
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("settings serialise to JSON")
    }

    pub fn is_empty(&self) -> bool {
        *self == SettingsUpdate::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_uses_property_names() {
        let u = SettingsUpdate {
            prompt: Some("a red fox".into()),
            seed: Some(123),
            guidance_scale: Some(1.5),
            ..Default::default()
        };
        let j = u.to_json();
        assert_eq!(
            std::str::from_utf8(&j).unwrap(),
            r#"{"prompt":"a red fox","seed":123,"guidance-scale":1.5}"#
        );
        assert_eq!(SettingsUpdate::from_json(&j).unwrap(), u);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = SettingsUpdate::from_json(br#"{"sed": 1}"#).unwrap_err();
        assert!(e.contains("sed"), "{e}");
    }
}
