// SPDX-License-Identifier: MPL-2.0
//! LCM scheduler constants (diffusers `LCMScheduler.set_timesteps` and
//! `get_scalings_for_boundary_condition_discrete`), built from the model's
//! scheduler/scheduler_config.json whatever scheduler class it names, as StreamDiffusion does.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::EngineError;

/// The parts of scheduler_config.json the LCM schedule depends on.
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerConfig {
    /// Where the values came from (for error messages).
    pub path: PathBuf,
    pub class_name: String,
    pub num_train_timesteps: u32,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub original_inference_steps: u32,
    pub timestep_scaling: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BetaSchedule {
    Linear,
    ScaledLinear,
    SquaredCosCapV2,
}

impl Default for SchedulerConfig {
    /// SD 1.5 / sd-turbo values with the LCM defaults.
    fn default() -> Self {
        SchedulerConfig {
            path: PathBuf::new(),
            class_name: "LCMScheduler".into(),
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            original_inference_steps: 50,
            timestep_scaling: 10.0,
        }
    }
}

impl SchedulerConfig {
    pub fn from_file(path: &Path) -> Result<Self, EngineError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                EngineError::missing(path, "scheduler config (scheduler_config.json)")
            } else {
                EngineError::invalid(path, format!("cannot read: {e}"))
            }
        })?;
        Self::from_json(&text, path)
    }

    pub fn from_json(text: &str, path: &Path) -> Result<Self, EngineError> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| EngineError::invalid(path, format!("invalid JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| EngineError::invalid(path, "expected a JSON object"))?;
        let mut cfg = SchedulerConfig {
            path: path.to_path_buf(),
            ..Default::default()
        };
        if let Some(c) = obj.get("_class_name").and_then(Value::as_str) {
            cfg.class_name = c.to_string();
        }
        let num = |key: &str| -> Result<Option<f64>, EngineError> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(n)) => Ok(n.as_f64()),
                Some(other) => Err(EngineError::config(
                    path,
                    key,
                    "a number",
                    other.to_string(),
                )),
            }
        };
        if let Some(n) = num("num_train_timesteps")? {
            if n < 2.0 || n.fract() != 0.0 || n > 100_000.0 {
                return Err(EngineError::config(
                    path,
                    "num_train_timesteps",
                    "an integer from 2 to 100000",
                    n.to_string(),
                ));
            }
            cfg.num_train_timesteps = n as u32;
        }
        if let Some(b) = num("beta_start")? {
            cfg.beta_start = b;
        }
        if let Some(b) = num("beta_end")? {
            cfg.beta_end = b;
        }
        if !(cfg.beta_start > 0.0 && cfg.beta_end > cfg.beta_start && cfg.beta_end < 1.0) {
            return Err(EngineError::config(
                path,
                "beta_start/beta_end",
                "0 < beta_start < beta_end < 1",
                format!("{} / {}", cfg.beta_start, cfg.beta_end),
            ));
        }
        if let Some(n) = num("original_inference_steps")? {
            if n < 1.0 || n.fract() != 0.0 || n > cfg.num_train_timesteps as f64 {
                return Err(EngineError::config(
                    path,
                    "original_inference_steps",
                    format!("an integer from 1 to {}", cfg.num_train_timesteps),
                    n.to_string(),
                ));
            }
            cfg.original_inference_steps = n as u32;
        }
        if let Some(s) = num("timestep_scaling")? {
            cfg.timestep_scaling = s;
        }
        match obj.get("beta_schedule") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => {
                cfg.beta_schedule = match s.as_str() {
                    "linear" => BetaSchedule::Linear,
                    "scaled_linear" => BetaSchedule::ScaledLinear,
                    "squaredcos_cap_v2" => BetaSchedule::SquaredCosCapV2,
                    other => {
                        return Err(EngineError::config(
                            path,
                            "beta_schedule",
                            "linear, scaled_linear or squaredcos_cap_v2",
                            format!("\"{other}\""),
                        ));
                    }
                }
            }
            Some(other) => {
                return Err(EngineError::config(
                    path,
                    "beta_schedule",
                    "a string",
                    other.to_string(),
                ));
            }
        }
        match obj.get("prediction_type") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s == "epsilon" => {}
            Some(other) => {
                return Err(EngineError::config(
                    path,
                    "prediction_type",
                    "\"epsilon\" (v_prediction and sample models are not supported)",
                    other.to_string(),
                ));
            }
        }
        if obj.get("rescale_betas_zero_snr").and_then(Value::as_bool) == Some(true) {
            return Err(EngineError::config(
                path,
                "rescale_betas_zero_snr",
                "false (zero-SNR schedules are not supported)",
                "true",
            ));
        }
        if obj.get("trained_betas").is_some_and(|v| !v.is_null()) {
            return Err(EngineError::config(
                path,
                "trained_betas",
                "null (explicit beta tables are not supported)",
                "a table",
            ));
        }
        Ok(cfg)
    }

    /// `alphas_cumprod` as diffusers computes it: betas in float32, products accumulated
    /// in double and stored as float32 (torch's CPU cumprod).
    pub fn alphas_cumprod(&self) -> Vec<f32> {
        let n = self.num_train_timesteps as usize;
        let betas: Vec<f32> = match self.beta_schedule {
            BetaSchedule::Linear => linspace_f32(self.beta_start as f32, self.beta_end as f32, n),
            BetaSchedule::ScaledLinear => linspace_f32(
                self.beta_start.sqrt() as f32,
                self.beta_end.sqrt() as f32,
                n,
            )
            .into_iter()
            .map(|b| b * b)
            .collect(),
            BetaSchedule::SquaredCosCapV2 => {
                let abar = |t: f64| {
                    ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                        .cos()
                        .powi(2)
                };
                (0..n)
                    .map(|i| {
                        let t1 = i as f64 / n as f64;
                        let t2 = (i + 1) as f64 / n as f64;
                        (1.0 - abar(t2) / abar(t1)).min(0.999) as f32
                    })
                    .collect()
            }
        };
        let mut acc = 1.0f64;
        betas
            .iter()
            .map(|&b| {
                acc *= (1.0f32 - b) as f64;
                acc as f32
            })
            .collect()
    }

    /// The LCM timestep list for `num_inference_steps` (diffusers `LCMScheduler.set_timesteps`
    /// with strength 1): `original_inference_steps` evenly spaced training steps, reversed,
    /// sampled at `floor(linspace(0, len, num_inference_steps, endpoint=False))`.
    pub fn lcm_timesteps(&self, num_inference_steps: u32) -> Result<Vec<u32>, EngineError> {
        let original = self.original_inference_steps as usize;
        let k = self.num_train_timesteps as usize / original;
        if num_inference_steps == 0 || num_inference_steps as usize > original {
            return Err(EngineError::argument(
                "num-inference-steps",
                format!(
                    "1 to {original} (original_inference_steps of {})",
                    self.path.display()
                ),
                num_inference_steps.to_string(),
            ));
        }
        // [k-1, 2k-1, ..., original*k - 1], reversed.
        let origin: Vec<usize> = (1..=original).rev().map(|i| i * k - 1).collect();
        let len = origin.len();
        let steps = num_inference_steps as usize;
        Ok((0..steps)
            .map(|i| {
                let idx = ((i as f64) * (len as f64) / (steps as f64)).floor() as usize;
                origin[idx.min(len - 1)] as u32
            })
            .collect())
    }

    /// Constants for the denoising steps picked by `t_index_list`.
    pub fn schedule(
        &self,
        t_index_list: &[u32],
        num_inference_steps: u32,
    ) -> Result<Vec<StepConstants>, EngineError> {
        if t_index_list.is_empty() {
            return Err(EngineError::argument(
                "t-index-list",
                "at least one index",
                "an empty list",
            ));
        }
        let timesteps = self.lcm_timesteps(num_inference_steps)?;
        let abar = self.alphas_cumprod();
        t_index_list
            .iter()
            .map(|&idx| {
                let t = *timesteps.get(idx as usize).ok_or_else(|| {
                    EngineError::argument(
                        "t-index-list",
                        format!("indices below num-inference-steps ({num_inference_steps})"),
                        idx.to_string(),
                    )
                })?;
                let ac = abar[t as usize];
                // float32 throughout, as torch computes them for StreamDiffusion.
                let s = t as f32 * self.timestep_scaling as f32;
                let sigma2 = 0.25f32;
                Ok(StepConstants {
                    timestep: t,
                    alpha_cumprod: ac,
                    alpha: ac.sqrt(),
                    beta: (1.0f32 - ac).sqrt(),
                    c_skip: sigma2 / (s * s + sigma2),
                    c_out: s / (s * s + sigma2).sqrt(),
                })
            })
            .collect()
    }
}

/// Per-step constants: `alpha = sqrt(abar(t))`, `beta = sqrt(1 - abar(t))`, LCM boundary
/// scalings with `s = timestep_scaling * t`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepConstants {
    pub timestep: u32,
    pub alpha_cumprod: f32,
    pub alpha: f32,
    pub beta: f32,
    pub c_skip: f32,
    pub c_out: f32,
}

/// torch.linspace in float32 as ATen computes it on the CPU: a float32 step, then
/// `start + step * i` for the first half and `end - step * (n - 1 - i)` for the second,
/// each a fused multiply-add rounded once to float32 (the f32 product is exact in f64).
fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                (start as f64 + step as f64 * i as f64) as f32
            } else {
                (end as f64 - step as f64 * (n - 1 - i) as f64) as f32
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_timesteps_are_999_minus_20j() {
        let cfg = SchedulerConfig::default();
        let t = cfg.lcm_timesteps(50).unwrap();
        assert_eq!(t.len(), 50);
        for (j, &t) in t.iter().enumerate() {
            assert_eq!(t as usize, 999 - 20 * j);
        }
    }

    #[test]
    fn notes_example_values() {
        let cfg = SchedulerConfig::default();
        let s = cfg.schedule(&[32, 45], 50).unwrap();
        assert_eq!(s[0].timestep, 359);
        assert_eq!(s[1].timestep, 99);
        assert!((s[0].alpha - 0.7011).abs() < 1e-4, "{:?}", s[0]);
        assert!((s[0].beta - 0.7131).abs() < 1e-4);
        assert!((s[1].alpha - 0.9463).abs() < 1e-4);
        assert!((s[1].beta - 0.3233).abs() < 1e-4);
        assert!(s[0].c_skip < 1e-5 && (s[0].c_out - 1.0).abs() < 1e-5);
    }

    #[test]
    fn bad_configs_are_named() {
        let p = Path::new("scheduler_config.json");
        let e = SchedulerConfig::from_json(r#"{"prediction_type":"v_prediction"}"#, p).unwrap_err();
        assert!(e.to_string().contains("prediction_type"), "{e}");
        assert!(e.to_string().contains("v_prediction"), "{e}");
        let e = SchedulerConfig::from_json(r#"{"beta_schedule":"exotic"}"#, p).unwrap_err();
        assert!(e.to_string().contains("beta_schedule"), "{e}");
        let e = SchedulerConfig::from_json("{", p).unwrap_err();
        assert!(e.to_string().contains("invalid JSON"), "{e}");
        let cfg = SchedulerConfig::default();
        assert!(cfg.schedule(&[50], 50).is_err());
        assert!(cfg.schedule(&[], 50).is_err());
        assert!(cfg.lcm_timesteps(51).is_err());
    }

    #[test]
    fn euler_config_like_sd_turbo_is_usable() {
        let json = r#"{"_class_name":"EulerDiscreteScheduler","beta_end":0.012,
            "beta_schedule":"scaled_linear","beta_start":0.00085,"num_train_timesteps":1000,
            "prediction_type":"epsilon","timestep_spacing":"trailing"}"#;
        let cfg = SchedulerConfig::from_json(json, Path::new("x")).unwrap();
        assert_eq!(cfg.class_name, "EulerDiscreteScheduler");
        assert_eq!(cfg.schedule(&[35, 45], 50).unwrap()[0].timestep, 299);
    }
}
