// SPDX-License-Identifier: MPL-2.0
//! Live settings: what travels from `settingssrc` to `i2itransform`'s `settings` pad.
//!
//! On the pad each `application/x-i2i-settings` buffer holds one [`SettingsUpdate`] as a
//! UTF-8 JSON object. Keys are the i2itransform property names; absent keys leave the
//! current value unchanged.

use serde::{Deserialize, Serialize};

use blend::BlendMode;

pub mod blend;
pub mod command;
pub mod hub;
pub mod limits;
pub mod lora;
pub mod message;
pub mod peers;
pub mod state;

/// Caps name of the buffers on the settings pad.
pub const SETTINGS_CAPS_NAME: &str = "application/x-i2i-settings";

/// Default port of the settings state publisher (`i2i-prompt` PUB, `settingssrc` SUB).
pub const DEFAULT_STATE_PORT: u16 = 5556;
/// Default port of the command socket of `i2i-prompt` (ROUTER; one-shot commands, reports).
pub const DEFAULT_CONTROL_PORT: u16 = 5560;

/// Accepted ranges, in one place for every way a value can arrive: chat text, msgpack and
/// JSON messages, the settings pad, and i2itransform's properties (their `GParamSpec`
/// limits are these constants).
pub const GUIDANCE_SCALE_RANGE: (f64, f64) = (0.0, 50.0);
pub const DELTA_RANGE: (f64, f64) = (0.0, 10.0);
/// 1 would make the similarity filter divide by zero.
pub const SIMILARITY_THRESHOLD_RANGE: (f64, f64) = (0.0, 0.999);
/// Largest transition length in frames (a minute at 60 frames/s).
pub const MAX_TRANSITION_FRAMES: u32 = 3600;
/// `num-inference-steps`: LCM schedules use up to the 1000 training steps.
pub const NUM_INFERENCE_STEPS_RANGE: (u32, u32) = (1, 1000);
/// `num-inference-steps` of a transform left at its default; the settings holder checks
/// t-index lists against it unless told otherwise (`i2i-prompt --steps`).
pub const DEFAULT_NUM_INFERENCE_STEPS: u32 = 50;
/// Smallest blend weight other than 0: weights are normalised, and smaller ones (down to
/// subnormal numbers) divide to infinities and turn the picture black.
pub const MIN_BLEND_WEIGHT: f64 = 1e-6;
/// Largest blend weight (its square must stay a finite number).
pub const MAX_BLEND_WEIGHT: f64 = 1e6;
/// Largest t-index value (an index into at most 1000 timesteps).
pub const MAX_T_INDEX: u32 = NUM_INFERENCE_STEPS_RANGE.1 - 1;
/// Most entries in a t-index list (more denoising steps is not real-time anywhere).
pub const MAX_T_INDEX_ENTRIES: usize = 50;
/// Most entries in a prompt or seed blend (each prompt costs one text-encoder run).
pub const MAX_BLEND_ENTRIES: usize = 8;
/// `strength`: 0 = the weakest change the t-index list's spacing allows, 1 = the strongest.
pub const STRENGTH_RANGE: (f64, f64) = (0.0, 1.0);
/// `ip-adapter-scale`: each layer's weight of the IP-Adapter picture (0 = as without one).
pub const IP_ADAPTER_SCALE_RANGE: (f64, f64) = (0.0, 2.0);
/// Most values in an `ip-adapter-scale` list (SDXL has 70 IP layers).
pub const MAX_IP_ADAPTER_SCALES: usize = 256;
/// `t-index-list` of a transform left at its default (what `strength` shifts while the
/// holder has no list of its own; the engine's default too).
pub const DEFAULT_T_INDEX_LIST: [u32; 2] = [32, 45];
/// How the negative (unconditional) side of classifier-free guidance is formed: the
/// `cfg-type` setting and property, and the engine's parameter.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default)]
#[cfg_attr(feature = "glib", derive(glib::Enum))]
#[cfg_attr(feature = "glib", enum_type(name = "GstI2iCfgType"))]
#[repr(u32)]
pub enum CfgType {
    /// No guidance: `eps = eps_cond`.
    #[cfg_attr(
        feature = "glib",
        enum_value(name = "None: no classifier-free guidance", nick = "none")
    )]
    None = 0,
    /// Full CFG: the UNet also runs on the negative prompt (2n evaluations).
    #[cfg_attr(
        feature = "glib",
        enum_value(
            name = "Full: the UNet also runs on the negative prompt (2n evaluations)",
            nick = "full"
        )
    )]
    Full = 1,
    /// Residual CFG with the stock noise as the negative (n evaluations).
    #[default]
    #[cfg_attr(
        feature = "glib",
        enum_value(
            name = "Self: residual CFG with the stock noise as negative (n evaluations)",
            nick = "self"
        )
    )]
    SelfNegative = 2,
    /// Residual CFG initialised once per frame from the negative prompt (n + 1 evaluations).
    #[cfg_attr(
        feature = "glib",
        enum_value(
            name = "Initialize: residual CFG initialised from the negative prompt (n + 1 evaluations)",
            nick = "initialize"
        )
    )]
    Initialize = 3,
}

impl CfgType {
    /// Every guidance type.
    pub const ALL: [CfgType; 4] = [
        CfgType::None,
        CfgType::Full,
        CfgType::SelfNegative,
        CfgType::Initialize,
    ];

    /// The `cfg-type` name.
    pub fn nick(self) -> &'static str {
        match self {
            CfgType::None => "none",
            CfgType::Full => "full",
            CfgType::SelfNegative => "self",
            CfgType::Initialize => "initialize",
        }
    }

    /// From a `cfg-type` name; the error names the value and the accepted ones.
    pub fn parse(name: &str) -> Result<CfgType, String> {
        CfgType::ALL
            .into_iter()
            .find(|c| c.nick() == name)
            .ok_or_else(|| {
                format!(
                    "cfg-type: \"{name}\" is not a guidance mode (accepted: {})",
                    CfgType::ALL.map(CfgType::nick).join(", ")
                )
            })
    }
}

impl std::fmt::Display for CfgType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.nick())
    }
}

/// On the wire (JSON and the holder's state) a guidance mode is its name.
impl Serialize for CfgType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.nick())
    }
}

impl<'de> Deserialize<'de> for CfgType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        CfgType::parse(&name).map_err(serde::de::Error::custom)
    }
}

/// On the wire a t-index list is the text the `t-index-list` property takes ("32,45"),
/// checked by [`parse_t_index_list`] when read.
mod t_index_list_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(list: &Option<Vec<u32>>, s: S) -> Result<S::Ok, S::Error> {
        match list {
            Some(l) => s.serialize_str(&super::format_t_index_list(l)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u32>>, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_t_index_list(&text)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("t-index-list \"{text}\": {e}")))
    }
}

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
    /// Indices into the timestep list; "32,45" on the wire, as the `t-index-list`
    /// property writes it.
    #[serde(
        default,
        with = "t_index_list_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub t_index_list: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guidance_scale: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cfg_type: Option<CfgType>,
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
    /// How blends and transitions combine: linear or slerp (see [`blend`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blend_mode: Option<BlendMode>,
    /// 0..1, 1 = strongest change: moves the t-index list as a whole, its spacing kept
    /// (see [`shift_t_index_list`]). Relative to the list it lands on, so whoever holds
    /// that list resolves it: the settings holder into the `t-index-list` of its state
    /// (a published state never carries it), a transform into its own list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strength: Option<f64>,
    /// LoRA adapters, `FILE[:SCALE][,FILE[:SCALE]...]` (see [`lora`]); empty = none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<String>,
    /// The IP-Adapter picture: a JPEG or PNG file on the transform's machine ("" = none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_adapter_image: Option<String>,
    /// The IP-Adapter scale: one value, or one per IP layer (0..2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_adapter_scale: Option<Vec<f64>>,
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

    /// Applies `later` on top of `self`: every key present in `later` wins. Used to
    /// coalesce updates that arrive faster than they are pushed, and to keep a full state.
    pub fn merge(&mut self, later: SettingsUpdate) {
        let later_sets_list = later.t_index_list.is_some();
        let later_strength = later.strength;
        macro_rules! take {
            ($($f:ident),*) => { $( if later.$f.is_some() { self.$f = later.$f; } )* };
        }
        take!(
            prompt,
            negative_prompt,
            seed,
            t_index_list,
            guidance_scale,
            delta,
            cfg_type,
            similarity_threshold,
            transition_frames,
            prompt_blend,
            seed_blend,
            blend_mode,
            strength,
            lora,
            ip_adapter_image,
            ip_adapter_scale
        );
        // A list given later replaces the one an earlier strength moved: that strength no
        // longer applies (strength is applied after the list of the same update).
        if later_sets_list {
            self.strength = later_strength;
        }
    }

    /// The keys of `self` whose value differs from `previous` (keys absent from `self`
    /// are not changes: a state never unsets a key; an absent and an empty blend are equal).
    pub fn changes_since(&self, previous: &SettingsUpdate) -> SettingsUpdate {
        let mut d = SettingsUpdate::default();
        macro_rules! diff {
            ($($f:ident),*) => { $( if self.$f.is_some() && self.$f != previous.$f { d.$f = self.$f.clone(); } )* };
        }
        diff!(
            prompt,
            negative_prompt,
            seed,
            t_index_list,
            guidance_scale,
            delta,
            cfg_type,
            similarity_threshold,
            transition_frames,
            blend_mode,
            strength,
            ip_adapter_image,
            ip_adapter_scale
        );
        // No LoRA and an empty list are the same.
        if let Some(l) = &self.lora
            && *l != previous.lora.clone().unwrap_or_default()
        {
            d.lora = Some(l.clone());
        }
        // No blend and an empty blend are the same: ending a blend that never began is
        // no change.
        fn blend<T: Clone + PartialEq>(
            new: &Option<Vec<T>>,
            old: &Option<Vec<T>>,
        ) -> Option<Vec<T>> {
            let (n, o) = (new.as_deref()?, old.as_deref().unwrap_or(&[]));
            (n != o).then(|| n.to_vec())
        }
        d.prompt_blend = blend(&self.prompt_blend, &previous.prompt_blend);
        d.seed_blend = blend(&self.seed_blend, &previous.seed_blend);
        d
    }

    /// A plain prompt ends a prompt blend and a plain seed ends a seed blend: make that
    /// explicit (an empty blend list clears the blend), so the receiver needs no memory
    /// of how the message was written.
    pub fn with_explicit_blend_clears(mut self) -> Self {
        if self.prompt.is_some() && self.prompt_blend.is_none() {
            self.prompt_blend = Some(Vec::new());
        }
        if self.seed.is_some() && self.seed_blend.is_none() {
            self.seed_blend = Some(Vec::new());
        }
        self
    }

    /// One single-key update per key present, each named by its property (a plain
    /// prompt's explicit blend clear stays with the blend key). A receiver applies the
    /// valid ones and refuses only the others.
    pub fn split_keys(&self) -> Vec<(&'static str, SettingsUpdate)> {
        let mut out = Vec::new();
        macro_rules! one {
            ($($f:ident => $name:literal),*) => { $(
                if self.$f.is_some() {
                    out.push(($name, SettingsUpdate { $f: self.$f.clone(), ..Default::default() }));
                }
            )* };
        }
        one!(
            prompt => "prompt",
            negative_prompt => "negative-prompt",
            seed => "seed",
            t_index_list => "t-index-list",
            guidance_scale => "guidance-scale",
            delta => "delta",
            cfg_type => "cfg-type",
            similarity_threshold => "similarity-threshold",
            transition_frames => "transition-frames",
            prompt_blend => "prompt-blend",
            seed_blend => "seed-blend",
            blend_mode => "blend-mode",
            strength => "strength",
            lora => "lora",
            ip_adapter_image => "ip-adapter-image",
            ip_adapter_scale => "ip-adapter-scale"
        );
        out
    }

    /// Splits an update into the part that passes `check` key by key and the refusals
    /// (one message per refused key). The one rule every receiver follows: a bad key
    /// never takes the good ones down with it.
    pub fn partition(
        &self,
        mut check: impl FnMut(&SettingsUpdate) -> Result<(), String>,
    ) -> (SettingsUpdate, Vec<String>) {
        let mut valid = SettingsUpdate::default();
        let mut refused = Vec::new();
        for (_, one) in self.split_keys() {
            match check(&one) {
                Ok(()) => valid.merge(one),
                Err(e) => refused.push(e),
            }
        }
        (valid, refused)
    }

    /// Turns a `strength` into the `t-index-list` it gives: the update's own list moved,
    /// else `current` (the list it will land on) moved. Afterwards the update holds no
    /// strength. The error names the value and why it cannot apply.
    pub fn resolve_strength(
        &mut self,
        current: &[u32],
        num_inference_steps: u32,
    ) -> Result<(), String> {
        let Some(s) = self.strength else {
            return Ok(());
        };
        let base = match &self.t_index_list {
            Some(t) => t.clone(),
            None => current.to_vec(),
        };
        self.t_index_list = Some(shift_t_index_list(&base, s, num_inference_steps)?);
        self.strength = None;
        Ok(())
    }

    /// [`SettingsUpdate::validate`], and the t-index list below `num_inference_steps`
    /// (what a transform with that many steps accepts): the settings holder's check.
    pub fn validate_for_steps(&self, num_inference_steps: u32) -> Result<(), String> {
        self.validate()?;
        if let Some(t) = &self.t_index_list {
            check_t_index_list_below(t, num_inference_steps)
                .map_err(|e| format!("t-index-list \"{}\": {e}", format_t_index_list(t)))?;
        }
        Ok(())
    }

    /// Checks every present value against the accepted ranges; the error names the key,
    /// the value and what is accepted.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(p) = &self.prompt {
            check_text("prompt", p)?;
        }
        if let Some(p) = &self.negative_prompt {
            check_text("negative-prompt", p)?;
        }
        if let Some(b) = &self.prompt_blend {
            for (p, _) in b {
                check_text("prompt-blend", p)?;
            }
        }
        if let Some(t) = &self.t_index_list {
            check_t_index_list(t)
                .map_err(|e| format!("t-index-list \"{}\": {e}", format_t_index_list(t)))?;
        }
        if let Some(v) = self.guidance_scale {
            check_range("guidance-scale", v, GUIDANCE_SCALE_RANGE)?;
        }
        if let Some(v) = self.delta {
            check_range("delta", v, DELTA_RANGE)?;
        }
        if let Some(v) = self.similarity_threshold {
            check_range("similarity-threshold", v, SIMILARITY_THRESHOLD_RANGE)?;
        }
        if let Some(v) = self.strength {
            check_range("strength", v, STRENGTH_RANGE)?;
        }
        if let Some(n) = self.transition_frames
            && n > MAX_TRANSITION_FRAMES
        {
            return Err(format!(
                "transition-frames: {n} is too long (accepted: 0 to {MAX_TRANSITION_FRAMES})"
            ));
        }
        if let Some(b) = &self.prompt_blend {
            check_weights("prompt-blend", b.iter().map(|(_, w)| *w))?;
        }
        if let Some(b) = &self.seed_blend {
            check_weights("seed-blend", b.iter().map(|(_, w)| *w))?;
        }
        if let Some(l) = &self.lora {
            check_text("lora", l)?;
            lora::parse_lora_list(l)?;
        }
        if let Some(p) = &self.ip_adapter_image {
            check_text("ip-adapter-image", p)?;
        }
        if let Some(s) = &self.ip_adapter_scale {
            check_ip_adapter_scale(s)?;
        }
        Ok(())
    }

    /// One line for people: `seed=5 prompt="a red fox"`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(v) = &self.prompt {
            parts.push(format!("prompt={v:?}"));
        }
        if let Some(v) = &self.negative_prompt {
            parts.push(format!("negative-prompt={v:?}"));
        }
        if let Some(v) = self.seed {
            parts.push(format!("seed={v}"));
        }
        if let Some(v) = &self.t_index_list {
            parts.push(format!("t-index-list={}", format_t_index_list(v)));
        }
        if let Some(v) = self.guidance_scale {
            parts.push(format!("guidance-scale={v}"));
        }
        if let Some(v) = self.delta {
            parts.push(format!("delta={v}"));
        }
        if let Some(v) = &self.cfg_type {
            parts.push(format!("cfg-type={v}"));
        }
        if let Some(v) = self.similarity_threshold {
            parts.push(format!("similarity-threshold={v}"));
        }
        if let Some(v) = self.transition_frames {
            parts.push(format!("transition-frames={v}"));
        }
        if let Some(b) = &self.prompt_blend {
            if b.is_empty() {
                parts.push("prompt-blend=off".to_string());
            } else {
                let items: Vec<String> = b.iter().map(|(t, w)| format!("{t:?}:{w}")).collect();
                parts.push(format!("prompt-blend=[{}]", items.join(" ")));
            }
        }
        if let Some(b) = &self.seed_blend {
            if b.is_empty() {
                parts.push("seed-blend=off".to_string());
            } else {
                let items: Vec<String> = b.iter().map(|(s, w)| format!("{s}:{w}")).collect();
                parts.push(format!("seed-blend=[{}]", items.join(" ")));
            }
        }
        if let Some(v) = &self.blend_mode {
            parts.push(format!("blend-mode={v}"));
        }
        if let Some(v) = self.strength {
            parts.push(format!("strength={v}"));
        }
        if let Some(v) = &self.lora {
            parts.push(format!("lora={}", if v.is_empty() { "off" } else { v }));
        }
        if let Some(v) = &self.ip_adapter_image {
            parts.push(format!("ip-adapter-image={v:?}"));
        }
        if let Some(v) = &self.ip_adapter_scale {
            parts.push(format!("ip-adapter-scale={}", format_ip_adapter_scale(v)));
        }
        if parts.is_empty() {
            "(nothing)".to_string()
        } else {
            parts.join(" ")
        }
    }
}

/// `ip-adapter-scale` as the property writes it: `0.7` or `0.5,1,1.5`.
pub fn format_ip_adapter_scale(v: &[f64]) -> String {
    v.iter().map(f64::to_string).collect::<Vec<_>>().join(",")
}

/// Reads `0.7` or `0.5,1,1.5` (commas or spaces) and checks it.
pub fn parse_ip_adapter_scale(text: &str) -> Result<Vec<f64>, String> {
    let mut out = Vec::new();
    for part in text.split([',', ' ']).filter(|p| !p.trim().is_empty()) {
        let v: f64 = part.trim().parse().map_err(|_| {
            format!(
                "ip-adapter-scale: \"{}\" is not a number (expected e.g. 0.7 or 0.5,1)",
                part.trim()
            )
        })?;
        out.push(v);
    }
    check_ip_adapter_scale(&out)?;
    Ok(out)
}

/// One to [`MAX_IP_ADAPTER_SCALES`] values in [`IP_ADAPTER_SCALE_RANGE`].
pub fn check_ip_adapter_scale(v: &[f64]) -> Result<(), String> {
    if v.is_empty() || v.len() > MAX_IP_ADAPTER_SCALES {
        return Err(format!(
            "ip-adapter-scale: {} values (give one, or one per IP-Adapter layer, at most {MAX_IP_ADAPTER_SCALES})",
            v.len()
        ));
    }
    for &x in v {
        check_range("ip-adapter-scale", x, IP_ADAPTER_SCALE_RANGE)?;
    }
    Ok(())
}

/// Parses a t-index list written as "22,32,45" (spaces allowed) and checks it
/// ([`check_t_index_list`]).
pub fn parse_t_index_list(text: &str) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for part in text.split([',', ' ']).filter(|p| !p.trim().is_empty()) {
        let part = part.trim();
        let v: u32 = part.parse().map_err(|_| {
            format!("\"{part}\" is not a t-index (expected whole numbers 0 to {MAX_T_INDEX} such as 22,32,45)")
        })?;
        out.push(v);
    }
    check_t_index_list(&out)?;
    Ok(out)
}

/// A t-index list holds 1 to [`MAX_T_INDEX_ENTRIES`] strictly increasing whole numbers
/// from 0 to [`MAX_T_INDEX`] (the transform also checks them against its
/// `num-inference-steps`: [`check_t_index_list_below`]).
pub fn check_t_index_list(list: &[u32]) -> Result<(), String> {
    for (i, &v) in list.iter().enumerate() {
        if v > MAX_T_INDEX {
            return Err(format!(
                "t-index {v} is out of range (accepted: 0 to {MAX_T_INDEX})"
            ));
        }
        if let Some(&last) = i.checked_sub(1).map(|j| &list[j])
            && v <= last
        {
            return Err(format!(
                "t-indices must increase strictly ({last} is followed by {v})"
            ));
        }
    }
    if list.is_empty() {
        return Err("empty t-index list (expected e.g. 22,32,45)".to_string());
    }
    if list.len() > MAX_T_INDEX_ENTRIES {
        return Err(format!(
            "{} t-indices is too many (at most {MAX_T_INDEX_ENTRIES})",
            list.len()
        ));
    }
    Ok(())
}

/// [`check_t_index_list`], and every index below `num_inference_steps` (the length of the
/// timestep list the indices point into).
pub fn check_t_index_list_below(list: &[u32], num_inference_steps: u32) -> Result<(), String> {
    check_t_index_list(list)?;
    if let Some(&v) = list.iter().find(|&&v| v >= num_inference_steps) {
        return Err(format!(
            "t-index {v} is out of range: num-inference-steps is {num_inference_steps}, so indices go from 0 to {}",
            num_inference_steps.saturating_sub(1)
        ));
    }
    Ok(())
}

/// [`parse_t_index_list`] and [`check_t_index_list_below`].
pub fn parse_t_index_list_below(text: &str, num_inference_steps: u32) -> Result<Vec<u32>, String> {
    let list = parse_t_index_list(text)?;
    check_t_index_list_below(&list, num_inference_steps)?;
    Ok(list)
}

/// Moves a t-index list as a whole for a `strength` of 0..1 (1 = strongest change: a
/// lower index starts from more noise, as in img2img): its first index becomes
/// `(1 - strength)` of the way from 0 to the highest first index that keeps the last one
/// below `num_inference_steps`; the spacing, and so the number of steps, is kept.
/// With 50 steps, `22,32` is `0,10` at strength 1, `20,30` at 0.5 and `39,49` at 0.
pub fn shift_t_index_list(
    list: &[u32],
    strength: f64,
    num_inference_steps: u32,
) -> Result<Vec<u32>, String> {
    check_range("strength", strength, STRENGTH_RANGE)?;
    let (Some(&first), Some(&last)) = (list.first(), list.last()) else {
        return Err("strength: there is no t-index list to move".to_string());
    };
    let top = num_inference_steps.saturating_sub(1);
    let span = last.saturating_sub(first);
    if span > top {
        return Err(format!(
            "strength: the t-index list {} spans {span} steps, more than num-inference-steps {num_inference_steps} holds",
            format_t_index_list(list)
        ));
    }
    let room = top - span;
    let new_first = ((1.0 - strength) * f64::from(room)).round() as u32;
    Ok(list.iter().map(|&v| v - first + new_first).collect())
}

/// The strength (0..1, 3 decimals) at which [`shift_t_index_list`] gives `list`: what a
/// strength control shows for it. 1 when the list leaves no room to move.
pub fn strength_of_t_index_list(list: &[u32], num_inference_steps: u32) -> Option<f64> {
    let (&first, &last) = (list.first()?, list.last()?);
    let room = num_inference_steps
        .saturating_sub(1)
        .checked_sub(last.checked_sub(first)?)?;
    if room == 0 {
        return Some(1.0);
    }
    let s = 1.0 - f64::from(first.min(room)) / f64::from(room);
    Some((s * 1000.0).round() / 1000.0)
}

/// Checks a numeric setting against its range; NaN and infinities are refused too. The
/// error names the key, the value and the range.
pub fn check_range(key: &str, v: f64, (lo, hi): (f64, f64)) -> Result<(), String> {
    if v.is_finite() && v >= lo && v <= hi {
        Ok(())
    } else {
        Err(format!(
            "{key}: {v} is out of range (accepted: {lo} to {hi})"
        ))
    }
}

/// Text settings (prompts) hold no control characters other than tab and line breaks,
/// however they arrived (chat text, a msgpack string, a JSON `\u0000` escape).
pub fn check_text(key: &str, text: &str) -> Result<(), String> {
    match text
        .char_indices()
        .find(|(_, c)| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        Some((at, c)) => Err(format!(
            "{key}: text contains the control character U+{:04X} at offset {at} (is it binary data?)",
            c as u32
        )),
        None => Ok(()),
    }
}

/// Formats a t-index list the way the `t-index-list` property writes it.
pub fn format_t_index_list(list: &[u32]) -> String {
    list.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn check_weights(key: &str, weights: impl Iterator<Item = f64>) -> Result<(), String> {
    let mut n = 0;
    let mut sum = 0.0;
    for w in weights {
        if !w.is_finite() || w < 0.0 {
            return Err(format!(
                "{key}: weight {w} is not accepted (weights are finite and >= 0)"
            ));
        }
        if w != 0.0 && !(MIN_BLEND_WEIGHT..=MAX_BLEND_WEIGHT).contains(&w) {
            return Err(format!(
                "{key}: weight {w:e} is not accepted (0, or {MIN_BLEND_WEIGHT:e} to {MAX_BLEND_WEIGHT:e}: smaller weights normalise to nothing)"
            ));
        }
        sum += w;
        n += 1;
    }
    if n > MAX_BLEND_ENTRIES {
        return Err(format!(
            "{key}: {n} entries is too many (at most {MAX_BLEND_ENTRIES})"
        ));
    }
    if n > 0 && sum <= 0.0 {
        return Err(format!(
            "{key}: the weights add up to 0 (at least one must be > 0)"
        ));
    }
    Ok(())
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
    fn merge_diff_and_blend_clears() {
        let mut state = SettingsUpdate {
            prompt: Some("fox".into()),
            seed: Some(1),
            ..Default::default()
        };
        let later = SettingsUpdate {
            seed: Some(2),
            prompt_blend: Some(vec![("a".into(), 1.0), ("b".into(), 1.0)]),
            ..Default::default()
        };
        let before = state.clone();
        state.merge(later.clone());
        assert_eq!(state.prompt.as_deref(), Some("fox"));
        assert_eq!(state.seed, Some(2));
        assert_eq!(state.changes_since(&before), later);
        assert!(state.changes_since(&state).is_empty());
        // A plain prompt ends the blend explicitly; ending a blend that never began is no change.
        let p = SettingsUpdate {
            prompt: Some("fox".into()),
            ..Default::default()
        }
        .with_explicit_blend_clears();
        assert_eq!(p.prompt_blend, Some(vec![]));
        assert_eq!(p.seed_blend, None);
        assert_eq!(p.changes_since(&state).prompt_blend, Some(vec![]));
        assert!(p.changes_since(&before).is_empty());
        assert!(p.summary().contains("prompt-blend=off"));
        assert_eq!(SettingsUpdate::default().summary(), "(nothing)");
    }

    #[test]
    fn validation_names_key_and_range() {
        let bad = |u: SettingsUpdate| u.validate().unwrap_err();
        assert!(
            bad(SettingsUpdate {
                delta: Some(f64::NAN),
                ..Default::default()
            })
            .contains("delta: NaN")
        );
        assert!(
            bad(SettingsUpdate {
                t_index_list: Some(vec![5, 3]),
                ..Default::default()
            })
            .contains("t-index-list")
        );
        // Names and lists that are not values at all are refused as they are read.
        assert!(
            SettingsUpdate::from_json(br#"{"t-index-list": "1,,x"}"#)
                .unwrap_err()
                .contains("t-index-list \"1,,x\"")
        );
        assert!(
            bad(SettingsUpdate {
                seed_blend: Some(vec![(1, -1.0)]),
                ..Default::default()
            })
            .contains("seed-blend: weight -1")
        );
        assert!(
            SettingsUpdate::from_json(br#"{"blend-mode": "cubic"}"#)
                .unwrap_err()
                .contains("blend-mode")
        );
        assert_eq!(parse_t_index_list(" 5, 10 ,45").unwrap(), vec![5, 10, 45]);
        let many: Vec<String> = (0..51).map(|i| i.to_string()).collect();
        assert!(
            parse_t_index_list(&many.join(","))
                .unwrap_err()
                .contains("too many")
        );
        assert!(
            parse_t_index_list("45,32")
                .unwrap_err()
                .contains("increase strictly")
        );
    }

    #[test]
    fn degenerate_blends_and_control_characters_are_refused() {
        let seeds = |w: f64| SettingsUpdate {
            seed_blend: Some(vec![(1, w), (2, w)]),
            ..Default::default()
        };
        for w in [1e-320, 1e-7, f64::NAN, f64::INFINITY, 1e300] {
            let e = seeds(w).validate().unwrap_err();
            assert!(e.contains("seed-blend: weight"), "{w}: {e}");
        }
        seeds(MIN_BLEND_WEIGHT).validate().unwrap();
        let e = SettingsUpdate {
            prompt: Some("a\u{0}b".into()),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(
            e.contains("prompt: text contains the control character U+0000"),
            "{e}"
        );
        let e = SettingsUpdate {
            prompt_blend: Some(vec![("a\u{1b}[A".into(), 1.0)]),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("U+001B"), "{e}");
    }

    #[test]
    fn partition_keeps_the_valid_keys() {
        let u = SettingsUpdate {
            prompt: Some("fox".into()),
            seed: Some(7),
            t_index_list: Some(vec![10, 60]),
            guidance_scale: Some(99.0),
            ..Default::default()
        };
        let (valid, refused) = u.partition(|one| one.validate_for_steps(50));
        assert_eq!(valid.prompt.as_deref(), Some("fox"));
        assert_eq!(valid.seed, Some(7));
        assert_eq!(valid.t_index_list, None);
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(
            refused[0].contains("t-index 60 is out of range"),
            "{refused:?}"
        );
        assert!(refused[1].contains("guidance-scale: 99"), "{refused:?}");
        assert!(u.validate_for_steps(50).is_err());
        assert!(
            u.split_keys()
                .iter()
                .all(|(_, one)| one.split_keys().len() == 1)
        );
    }

    #[test]
    fn strength_moves_the_list_with_its_spacing() {
        assert_eq!(shift_t_index_list(&[22, 32], 1.0, 50).unwrap(), vec![0, 10]);
        assert_eq!(
            shift_t_index_list(&[22, 32], 0.5, 50).unwrap(),
            vec![20, 30]
        );
        assert_eq!(
            shift_t_index_list(&[22, 32], 0.0, 50).unwrap(),
            vec![39, 49]
        );
        assert_eq!(
            shift_t_index_list(&[22, 32, 45], 1.0, 50).unwrap(),
            vec![0, 10, 23]
        );
        assert_eq!(shift_t_index_list(&[31], 0.5, 50).unwrap(), vec![25]);
        // Higher strength is a lower first index, never the other way round.
        let firsts: Vec<u32> = (0..=10)
            .map(|k| shift_t_index_list(&[32, 45], f64::from(k) / 10.0, 50).unwrap()[0])
            .collect();
        assert!(firsts.windows(2).all(|w| w[0] >= w[1]), "{firsts:?}");
        // The strength a list shows gives that list back.
        for list in [vec![0, 10], vec![20, 30], vec![39, 49], vec![32, 45]] {
            let s = strength_of_t_index_list(&list, 50).unwrap();
            assert_eq!(shift_t_index_list(&list, s, 50).unwrap(), list, "{s}");
        }
        assert_eq!(strength_of_t_index_list(&[0, 49], 50), Some(1.0));
        assert!(
            shift_t_index_list(&[22, 32], 1.5, 50)
                .unwrap_err()
                .contains("strength: 1.5 is out of range")
        );
        assert!(
            shift_t_index_list(&[0, 60], 0.5, 50)
                .unwrap_err()
                .contains("spans 60 steps")
        );
    }

    #[test]
    fn strength_resolves_against_the_list_it_lands_on() {
        let mut u = SettingsUpdate {
            strength: Some(1.0),
            ..Default::default()
        };
        u.resolve_strength(&[22, 32], 50).unwrap();
        assert_eq!(
            (u.t_index_list.as_deref(), u.strength),
            (Some(&[0, 10][..]), None)
        );
        // The update's own list first, then the strength.
        let mut u = SettingsUpdate {
            t_index_list: Some(vec![10, 12]),
            strength: Some(0.0),
            ..Default::default()
        };
        u.resolve_strength(&[22, 32], 50).unwrap();
        assert_eq!(u.t_index_list.as_deref(), Some(&[47, 49][..]));
        // A list merged after a strength cancels it; a strength after a list stays.
        let mut m = SettingsUpdate {
            strength: Some(0.2),
            ..Default::default()
        };
        m.merge(SettingsUpdate {
            t_index_list: Some(vec![5, 9]),
            ..Default::default()
        });
        assert_eq!(m.strength, None);
        m.merge(SettingsUpdate {
            strength: Some(0.7),
            ..Default::default()
        });
        assert_eq!(
            (m.t_index_list.as_deref(), m.strength),
            (Some(&[5, 9][..]), Some(0.7))
        );
        assert!(m.summary().contains("strength=0.7"));
        assert_eq!(m.split_keys().last().unwrap().0, "strength");
        assert!(
            SettingsUpdate {
                strength: Some(f64::NAN),
                ..Default::default()
            }
            .validate()
            .unwrap_err()
            .contains("strength: NaN")
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = SettingsUpdate::from_json(br#"{"sed": 1}"#).unwrap_err();
        assert!(e.contains("sed"), "{e}");
    }
}
