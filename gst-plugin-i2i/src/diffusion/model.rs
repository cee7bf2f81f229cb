// SPDX-License-Identifier: MPL-2.0
//! The four ONNX sessions of a diffusers / optimum model directory (text encoder, UNet,
//! VAE encoder and decoder), bound by name, with the element types and ranks read from
//! the sessions, and [`Model::load`], which opens them on the first execution provider
//! that works.
//!
//! Variants handled (see the notes on model files):
//! * text_encoder `input_ids` int64 or int32 `[B, 77]` -> `last_hidden_state` `[B, 77, E]`;
//! * unet `sample`, `timestep` (int64 / int32 / float32 / float16, rank 1 `[B]` or rank 0),
//!   `encoder_hidden_states` -> `out_sample` or `latent` (or the single output);
//! * vae_encoder `sample` -> `latent_sample` (4 channels) or `latent_parameters`
//!   (8 channels: mean and log-variance; the mean is used);
//! * vae_decoder `latent_sample` -> `sample`;
//! * ONNX Runtime's demo names: timestep `[1]`, vae_encoder `images` -> `latent`,
//!   vae_decoder `latent` -> `images`;
//! * SDXL (a UNet with `text_embeds` and `time_ids`, two text encoders): sdxl.rs.
//! * fused UNet + ControlNet graphs (ONNX Runtime's demo: `controlnet_images`
//!   `[num, B, 3, H, W]` and `controlnet_scales` `[num]`; diffusers' ControlNet export:
//!   `controlnet_conds` and `conditioning_scales` `[num]` or `[num, 1]`, output `noise_pred`):
//!   [`UnetControl`].
//! * float32 or float16 graphs; a dynamic batch dimension, or a fixed one (rows are then
//!   sent in chunks of that size, see [`chunks`]).
//!
//! The graph binding lives in graph.rs, the execution-provider set-up in provider.rs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ort::memory::Allocator;
use ort::value::Tensor;

use serde_json::Value;

use super::lora::UnetLora;
use super::scheduler::SchedulerConfig;
use super::sdxl::{self, UnetXl, XlText};
use super::tokenizer::ClipTokenizer;
use super::trt_cache::trt_cache_dir;
use super::weights;
use super::{EngineError, ExecutionProvider, LoadOptions};
use crate::runtime::graph::{Chunk, Elem, Feed, Graph, Spec, chunks, chunks_at_most};
use crate::runtime::graph::{rows_padded, shape_str};
use crate::runtime::provider::{
    ProfilePart, SessionFactory, TrtProfile, candidates, provider_error, trt_profile,
};
use crate::runtime::{LogLevel, log};

/// The text encoder and its tokenizer.
#[derive(Debug)]
pub struct TextEncoder {
    pub graph: Graph,
    pub tokenizer: ClipTokenizer,
    ids_spec: Spec,
    output: String,
    /// Sequence length fed to the graph.
    pub seq_len: usize,
    ids: Vec<i64>,
}

impl TextEncoder {
    fn bind(graph: Graph, tokenizer: ClipTokenizer) -> Result<Self, EngineError> {
        let ids_spec = graph.require_input("input_ids", "token ids [batch, 77]")?;
        graph.no_other_inputs(&["input_ids"])?;
        if ids_spec.elem.is_float() || ids_spec.rank() != 2 {
            return Err(EngineError::tensor(
                &graph.file,
                "input_ids",
                "int64 or int32 [batch, 77]",
                ids_spec.to_string(),
            ));
        }
        let seq_len = ids_spec.dim(1).unwrap_or(tokenizer.max_length());
        if seq_len != tokenizer.max_length() {
            return Err(EngineError::tensor(
                &graph.file,
                "input_ids",
                format!(
                    "sequence length {} (the tokenizer's model_max_length)",
                    tokenizer.max_length()
                ),
                ids_spec.to_string(),
            ));
        }
        if let Some(b) = ids_spec.dim(0)
            && b != 1
        {
            return Err(EngineError::tensor(
                &graph.file,
                "input_ids",
                "a dynamic batch or a batch of 1",
                ids_spec.to_string(),
            ));
        }
        let out = graph.pick_output(&["last_hidden_state"], "hidden states [batch, 77, E]")?;
        if out.rank() != 3 || !out.elem.is_float() {
            return Err(EngineError::tensor(
                &graph.file,
                &out.name,
                "float [batch, 77, E]",
                out.to_string(),
            ));
        }
        Ok(TextEncoder {
            output: out.name.clone(),
            graph,
            tokenizer,
            ids_spec,
            seq_len,
            ids: Vec::new(),
        })
    }

    /// Hidden states `[1, seq_len, E]` for `text`, weighted as its `(word:1.3)` / `[word]`
    /// syntax says (see [`weights`]).
    pub fn encode(&mut self, text: &str, out: &mut Vec<f32>) -> Result<[usize; 3], EngineError> {
        let (ids, token_weights) = weights::weighted_ids(&mut self.tokenizer, text)?;
        self.ids.clear();
        self.ids.extend(ids.iter().map(|&i| i as i64));
        let shape = [1i64, self.seq_len as i64];
        let name = self.ids_spec.name.clone();
        let feeds = [(name.as_str(), &shape[..], Feed::I64(&self.ids))];
        let s = self.graph.run(&feeds, &self.output.clone(), out)?;
        if s.len() != 3 || s[0] != 1 || s[1] != self.seq_len as i64 || s[2] <= 0 {
            return Err(EngineError::tensor(
                &self.graph.file,
                &self.output,
                format!("[1, {}, E]", self.seq_len),
                shape_str(&s),
            ));
        }
        weights::apply(out, &token_weights);
        Ok([1, self.seq_len, s[2] as usize])
    }
}

/// How the UNet takes its timestep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestepForm {
    /// One value per batch row.
    PerRow,
    /// A scalar: rows in one call must share the timestep.
    Scalar,
    /// A one-element `[1]` tensor with a dynamic batch elsewhere (ONNX Runtime's demo
    /// export): rows in one call must share the timestep.
    One,
}

/// The ControlNet inputs of a fused UNet + ControlNet graph.
#[derive(Debug)]
pub struct UnetControl {
    /// `controlnet_images` or `controlnet_conds`: `[num, batch, 3, H, W]` in `[0, 1]`.
    pub images: String,
    /// `controlnet_scales` or `conditioning_scales`: `[num]` or `[num, 1]`.
    pub scales: String,
    /// Rank of the scales input (1 or 2).
    scales_rank: usize,
    /// Number of ControlNets (the images' first dimension, fixed in the graph).
    pub count: usize,
    buf: Vec<f32>,
}

/// The names of the two ControlNet inputs in the layouts the engine reads.
pub const CONTROLNET_IMAGES: [&str; 2] = ["controlnet_images", "controlnet_conds"];
pub const CONTROLNET_SCALES: [&str; 2] = ["controlnet_scales", "conditioning_scales"];

impl UnetControl {
    /// Finds the ControlNet inputs of a fused graph (None for a plain UNet) and checks
    /// them against the engine's size.
    fn bind(graph: &Graph, opts: &LoadOptions) -> Result<Option<UnetControl>, EngineError> {
        let file = &graph.file;
        let images = CONTROLNET_IMAGES.iter().find_map(|n| graph.input(n));
        let scales = CONTROLNET_SCALES.iter().find_map(|n| graph.input(n));
        let (images, scales) = match (images, scales) {
            (None, None) => return Ok(None),
            (Some(i), Some(s)) => (i.clone(), s.clone()),
            (Some(i), None) => {
                return Err(EngineError::tensor(
                    file,
                    "controlnet_scales",
                    format!(
                        "an input named {CONTROLNET_SCALES:?} beside '{}' (a fused UNet + ControlNet graph)",
                        i.name
                    ),
                    "none",
                ));
            }
            (None, Some(s)) => {
                return Err(EngineError::tensor(
                    file,
                    "controlnet_images",
                    format!(
                        "an input named {CONTROLNET_IMAGES:?} beside '{}' (a fused UNet + ControlNet graph)",
                        s.name
                    ),
                    "none",
                ));
            }
        };
        let (h, w) = (opts.height as usize, opts.width as usize);
        let expected = format!(
            "float [num_controlnets, batch, 3, {h}, {w}] (control images for {}x{}, the number of ControlNets fixed in the graph)",
            opts.width, opts.height
        );
        let ok = |d: usize, v: usize| images.dim(d).is_none_or(|x| x == v);
        let count = images.dim(0).unwrap_or(0);
        if images.rank() != 5
            || !images.elem.is_float()
            || count == 0
            || !ok(2, 3)
            || !ok(3, h)
            || !ok(4, w)
        {
            return Err(EngineError::tensor(
                file,
                &images.name,
                expected,
                images.to_string(),
            ));
        }
        let scales_ok = scales.elem.is_float()
            && match scales.rank() {
                1 => scales.dim(0).is_none_or(|n| n == count),
                2 => {
                    scales.dim(0).is_none_or(|n| n == count) && scales.dim(1).is_none_or(|n| n == 1)
                }
                _ => false,
            };
        if !scales_ok {
            return Err(EngineError::tensor(
                file,
                &scales.name,
                format!("float [{count}] or [{count}, 1] (one scale per ControlNet)"),
                scales.to_string(),
            ));
        }
        Ok(Some(UnetControl {
            images: images.name.clone(),
            scales: scales.name.clone(),
            scales_rank: scales.rank(),
            count,
            buf: Vec::new(),
        }))
    }
}

/// Per-row ControlNet inputs for [`Unet::predict`]: `images` `[rows, num, 3, H, W]` and
/// `scales` `[rows, num]` (rows with other scales go in another call).
#[derive(Clone, Copy)]
pub struct ControlRows<'a> {
    pub images: &'a [f32],
    pub scales: &'a [f32],
}

#[derive(Debug)]
pub struct Unet {
    pub graph: Graph,
    pub timestep_form: TimestepForm,
    /// Fixed batch size of the graph, if any.
    pub fixed_batch: Option<usize>,
    /// Hidden size E the graph expects, if fixed.
    pub hidden_size: Option<usize>,
    /// SDXL's `text_embeds` and `time_ids`, when the graph takes them.
    pub xl: Option<UnetXl>,
    /// Size of the pooled vector packed after the hidden states (SDXL; 0 otherwise).
    pub pooled_size: usize,
    /// The ControlNet inputs of a fused graph.
    pub control: Option<UnetControl>,
    /// The LoRA inputs (`P.lora_A.weight` / `P.lora_B.weight`), bound on every call.
    pub lora: Option<UnetLora>,
    /// IP-Adapter: the image tokens after the text rows and `ipadapter_scale` (bound each run).
    pub ip: Option<super::ipadapter::IpLayout>,
    pub ip_scale: Vec<f32>,
    output: String,
    latent_h: usize,
    latent_w: usize,
    sample_buf: Vec<f32>,
    hidden_buf: Vec<f32>,
    time_buf: Vec<f32>,
}

impl Unet {
    fn bind(
        graph: Graph,
        latent_h: usize,
        latent_w: usize,
        opts: &LoadOptions,
    ) -> Result<Self, EngineError> {
        let sample = graph.require_input("sample", "noisy latents [batch, 4, h, w]")?;
        let timestep = graph.require_input("timestep", "diffusion timestep")?;
        let hidden =
            graph.require_input("encoder_hidden_states", "text embeddings [batch, 77, E]")?;
        let xl = UnetXl::bind(&graph, opts)?;
        let control = UnetControl::bind(&graph, opts)?;
        let mut known = vec!["sample", "timestep", "encoder_hidden_states"];
        if xl.is_some() {
            known.extend(sdxl::UNET_INPUTS);
        }
        if let Some(c) = &control {
            known.push(c.images.as_str());
            known.push(c.scales.as_str());
        }
        let lora = UnetLora::bind(&graph)?;
        if let Some(l) = &lora {
            known.extend(l.input_names());
        }
        let ip = super::ipadapter::IpLayout::of(&graph)?;
        if ip.is_some() {
            known.push(super::ipadapter::SCALE_INPUT);
        }
        graph.no_other_inputs(&known)?;
        let file = graph.file.clone();
        check_image_like(&file, &sample, 4, latent_h, latent_w, opts, "latent")?;
        if !sample.elem.is_float() {
            return Err(EngineError::tensor(
                &file,
                "sample",
                "float32 or float16",
                sample.to_string(),
            ));
        }
        let timestep_form = match timestep.rank() {
            0 => TimestepForm::Scalar,
            1 if timestep.dim(0) == Some(1) && sample.dim(0) != Some(1) => TimestepForm::One,
            1 => TimestepForm::PerRow,
            _ => {
                return Err(EngineError::tensor(
                    &file,
                    "timestep",
                    "rank 0 (scalar) or rank 1 [batch]",
                    timestep.to_string(),
                ));
            }
        };
        if hidden.rank() != 3 || !hidden.elem.is_float() {
            return Err(EngineError::tensor(
                &file,
                "encoder_hidden_states",
                "float [batch, 77, E]",
                hidden.to_string(),
            ));
        }
        let out = graph.pick_output(
            &["out_sample", "latent", "noise_pred"],
            "noise prediction [batch, 4, h, w]",
        )?;
        if out.rank() != 4 || !out.elem.is_float() || out.dim(1).is_some_and(|c| c != 4) {
            return Err(EngineError::tensor(
                &file,
                &out.name,
                "float [batch, 4, h, w]",
                out.to_string(),
            ));
        }
        let fixed_batch = sample.dim(0);
        if let (Some(b), TimestepForm::PerRow) = (timestep.dim(0), timestep_form)
            && Some(b) != fixed_batch
        {
            return Err(EngineError::tensor(
                &file,
                "timestep",
                format!("a batch matching 'sample' {}", sample),
                timestep.to_string(),
            ));
        }
        Ok(Unet {
            hidden_size: hidden.dim(2),
            xl,
            control,
            lora,
            ip_scale: ip.map_or(Vec::new(), |l| vec![1.0; l.layers]),
            ip,
            pooled_size: 0,
            output: out.name.clone(),
            graph,
            timestep_form,
            fixed_batch,
            latent_h,
            latent_w,
            sample_buf: Vec::new(),
            hidden_buf: Vec::new(),
            time_buf: Vec::new(),
        })
    }

    /// Predicts noise for `rows` rows: `sample` `[rows, 4, h, w]`, `timesteps[rows]`,
    /// `hidden` `[rows, L, E]` (the same data whenever `hidden_key` is the same), into
    /// `out` `[rows, 4, h, w]`. Splits into calls as the
    /// graph needs (scalar timestep: one call per run of equal timesteps; fixed batch:
    /// chunks of that size, the last one padded by repeating its last row). A fused
    /// ControlNet graph takes `control` (required then), and rows with different scales
    /// go in different calls. Returns the number of graph calls.
    #[allow(clippy::too_many_arguments)]
    pub fn predict(
        &mut self,
        sample: &[f32],
        timesteps: &[f32],
        hidden: &[f32],
        hidden_key: u64,
        seq: [usize; 2],
        control: Option<ControlRows<'_>>,
        out: &mut Vec<f32>,
    ) -> Result<usize, EngineError> {
        let rows = timesteps.len();
        let lat = 4 * self.latent_h * self.latent_w;
        let hid = seq[0] * seq[1];
        out.resize(rows * lat, 0.0);
        let mut calls = 0;
        // Runs of rows that may share a call: all rows, or (scalar timestep) each run of
        // equal timesteps.
        let num = self.control.as_ref().map_or(0, |c| c.count);
        let img = 3 * 64 * self.latent_h * self.latent_w;
        if num > 0 {
            let ok = control.is_some_and(|c| {
                c.images.len() == rows * num * img && c.scales.len() == rows * num
            });
            if !ok {
                return Err(EngineError::argument(
                    "control images",
                    format!("{num} per UNet row ({rows} rows of {num} x {img} floats)"),
                    control.map_or("none".to_string(), |c| format!("{} floats", c.images.len())),
                ));
            }
        }
        let same_scales = |a: usize, b: usize| {
            control.is_none_or(|c| {
                c.scales[a * num..(a + 1) * num] == c.scales[b * num..(b + 1) * num]
            })
        };
        let lora_shapes = self.lora.as_ref().map(UnetLora::shapes).unwrap_or_default();
        let mut g0 = 0;
        while g0 < rows {
            let g1 = match self.timestep_form {
                TimestepForm::PerRow => (g0..rows).find(|&r| !same_scales(r, g0)).unwrap_or(rows),
                TimestepForm::Scalar | TimestepForm::One => (g0..rows)
                    .find(|&r| timesteps[r] != timesteps[g0] || !same_scales(r, g0))
                    .unwrap_or(rows),
            };
            for Chunk { rows: r, batch: b } in chunks(g0..g1, self.fixed_batch) {
                let n = r.len();
                let s_in = rows_padded(sample, lat, r.clone(), b, &mut self.sample_buf);
                let h_in = rows_padded(hidden, hid, r.clone(), b, &mut self.hidden_buf);
                let t_in = rows_padded(timesteps, 1, r.clone(), b, &mut self.time_buf);
                let s_shape = [b as i64, 4, self.latent_h as i64, self.latent_w as i64];
                let mut h_shape = [b as i64, seq[0] as i64, seq[1] as i64];
                let t_shape_row = [b as i64];
                let (t_shape, t_data): (&[i64], &[f32]) = match self.timestep_form {
                    TimestepForm::PerRow => (&t_shape_row, t_in),
                    TimestepForm::Scalar => (&[], &t_in[..1]),
                    TimestepForm::One => (&[1], &t_in[..1]),
                };
                let p = self.pooled_size;
                let p_shape = [b as i64, p as i64];
                let id_shape = [b as i64, sdxl::TIME_IDS as i64];
                let mut feeds = vec![
                    ("sample", &s_shape[..], Feed::F32(s_in)),
                    ("timestep", t_shape, Feed::F32(t_data)),
                ];
                // The rows' embeddings change only with a prompt or the rows' mix:
                // bound (uploaded) once, not every step.
                let key = hidden_key.wrapping_mul(1 << 20) ^ r.start as u64;
                // SDXL: the packed rows become encoder_hidden_states, text_embeds, time_ids.
                if let Some(xl) = self.xl.as_mut() {
                    h_shape[1] = xl.split(h_in, b, seq, p) as i64;
                    feeds.push((
                        "encoder_hidden_states",
                        &h_shape[..],
                        Feed::Keyed(xl.hidden(), key),
                    ));
                    feeds.push(("text_embeds", &p_shape[..], Feed::Keyed(xl.pooled(), key)));
                    feeds.push(("time_ids", &id_shape[..], Feed::Keyed(xl.time_ids(), key)));
                } else {
                    feeds.push((
                        "encoder_hidden_states",
                        &h_shape[..],
                        Feed::Keyed(h_in, key),
                    ));
                }
                let ip_shape = [self.ip_scale.len() as i64];
                if self.ip.is_some() {
                    feeds.push((
                        super::ipadapter::SCALE_INPUT,
                        &ip_shape[..],
                        Feed::F32(&self.ip_scale),
                    ));
                }
                let c_shape = [
                    num as i64,
                    b as i64,
                    3,
                    8 * self.latent_h as i64,
                    8 * self.latent_w as i64,
                ];
                let sc_shape_1 = [num as i64];
                let sc_shape_2 = [num as i64, 1];
                if let (Some(uc), Some(c)) = (self.control.as_mut(), control) {
                    // [rows, num, ...] to the graph's [num, batch, ...], padded as the rows.
                    uc.buf.clear();
                    for k in 0..num {
                        for row in (r.start..r.end).chain(std::iter::repeat_n(r.end - 1, b - n)) {
                            let at = (row * num + k) * img;
                            uc.buf.extend_from_slice(&c.images[at..at + img]);
                        }
                    }
                    let sc_shape: &[i64] = if uc.scales_rank == 1 {
                        &sc_shape_1
                    } else {
                        &sc_shape_2
                    };
                    feeds.push((uc.images.as_str(), &c_shape[..], Feed::F32(&uc.buf)));
                    feeds.push((
                        uc.scales.as_str(),
                        sc_shape,
                        Feed::F32(&c.scales[r.start * num..(r.start + 1) * num]),
                    ));
                }
                if let Some(l) = &self.lora {
                    l.feeds(&lora_shapes, &mut feeds);
                }
                let dst = &mut out[r.start * lat..r.end * lat];
                let ok = self.graph.run_with(&feeds, &self.output, |shape, eps| {
                    if shape != s_shape {
                        return Err(shape_str(shape));
                    }
                    dst.copy_from_slice(&eps[..n * lat]);
                    Ok(())
                })?;
                calls += 1;
                if let Err(found) = ok {
                    return Err(EngineError::tensor(
                        &self.graph.file,
                        &self.output,
                        shape_str(&s_shape),
                        found,
                    ));
                }
            }
            g0 = g1;
        }
        Ok(calls)
    }
}

/// Checks a `[batch, channels, h, w]` input against the engine's size.
fn check_image_like(
    file: &Path,
    spec: &Spec,
    channels: usize,
    h: usize,
    w: usize,
    opts: &LoadOptions,
    what: &str,
) -> Result<(), EngineError> {
    let expected = format!(
        "[batch, {channels}, {h}, {w}] ({what} for {}x{})",
        opts.width, opts.height
    );
    if spec.rank() != 4 {
        return Err(EngineError::tensor(
            file,
            &spec.name,
            expected,
            spec.to_string(),
        ));
    }
    let ok = |d: usize, v: usize| spec.dim(d).is_none_or(|x| x == v);
    if !ok(1, channels) || !ok(2, h) || !ok(3, w) {
        let fix = if ok(1, channels) {
            " (the graph has a fixed size: set width/height to match it, or export with dynamic axes)"
        } else {
            ""
        };
        return Err(EngineError::tensor(
            file,
            &spec.name,
            expected,
            format!("{spec}{fix}"),
        ));
    }
    Ok(())
}

/// How the VAE encoder's output becomes the latent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LatentForm {
    /// 4 channels: the latent itself.
    Sample,
    /// 8 channels: mean and log-variance; the mean is used.
    Parameters,
}

/// Images for the VAE encoder: `[rows, 3, H, W]` floats, or one frame's host tensor.
#[derive(Clone, Copy)]
pub enum Images<'a> {
    Rows(&'a [f32]),
    One(&'a ort::value::Tensor<f32>),
}

#[derive(Debug)]
pub struct VaeEncoder {
    pub graph: Graph,
    /// The element type of its `sample` input.
    elem: Elem,
    pub fixed_batch: Option<usize>,
    input: String,
    output: String,
    declared_form: Option<LatentForm>,
    height: usize,
    width: usize,
    in_buf: Vec<f32>,
    out_buf: Vec<f32>,
}

impl VaeEncoder {
    fn bind(graph: Graph, opts: &LoadOptions) -> Result<Self, EngineError> {
        let (h, w) = (opts.height as usize, opts.width as usize);
        // `images` in ONNX Runtime's demo export.
        let name = if graph.input("images").is_some() {
            "images"
        } else {
            "sample"
        };
        let sample = graph.require_input(name, "image [batch, 3, H, W] in [-1, 1]")?;
        graph.no_other_inputs(&[name])?;
        check_image_like(&graph.file, &sample, 3, h, w, opts, "image")?;
        if !sample.elem.is_float() {
            return Err(EngineError::tensor(
                &graph.file,
                name,
                "float32 or float16",
                sample.to_string(),
            ));
        }
        let out = graph.pick_output(
            &[
                "latent_sample",
                "latent_parameters",
                "latent_dist",
                "latent",
            ],
            "latents [batch, 4, h, w] or [batch, 8, h, w]",
        )?;
        let declared_form = match (out.name.as_str(), out.dim(1)) {
            (_, Some(4)) => Some(LatentForm::Sample),
            (_, Some(8)) => Some(LatentForm::Parameters),
            ("latent_parameters", None) => Some(LatentForm::Parameters),
            ("latent_sample", None) => Some(LatentForm::Sample),
            (_, None) => None,
            (_, Some(_)) => {
                return Err(EngineError::tensor(
                    &graph.file,
                    &out.name,
                    "4 channels (latent_sample) or 8 channels (latent_parameters: mean, logvar)",
                    out.to_string(),
                ));
            }
        };
        if out.rank() != 4 || !out.elem.is_float() {
            return Err(EngineError::tensor(
                &graph.file,
                &out.name,
                "float [batch, 4 or 8, h, w]",
                out.to_string(),
            ));
        }
        Ok(VaeEncoder {
            elem: sample.elem,
            fixed_batch: sample.dim(0),
            input: sample.name.clone(),
            output: out.name.clone(),
            declared_form,
            graph,
            height: h,
            width: w,
            in_buf: Vec::new(),
            out_buf: Vec::new(),
        })
    }

    /// Latents `[rows, 4, h, w]` (unscaled) of images `[rows, 3, H, W]`.
    pub fn encode(
        &mut self,
        images: Images<'_>,
        rows: usize,
        out: &mut Vec<f32>,
    ) -> Result<usize, EngineError> {
        let img = 3 * self.height * self.width;
        let (lh, lw) = (self.height / 8, self.width / 8);
        let lat = 4 * lh * lw;
        out.resize(rows * lat, 0.0);
        let mut calls = 0;
        for Chunk { rows: r, batch: b } in chunks(0..rows, self.fixed_batch) {
            let (r0, n) = (r.start, r.len());
            let shape = [b as i64, 3, self.height as i64, self.width as i64];
            let feed = match images {
                // One image in a float32 host tensor is bound as it is, without a copy.
                Images::One(t) if b == 1 && self.elem == Elem::F32 => Feed::Tensor(t),
                Images::One(t) => Feed::F32(rows_padded(
                    t.extract_tensor().1,
                    img,
                    r,
                    b,
                    &mut self.in_buf,
                )),
                Images::Rows(v) => Feed::F32(rows_padded(v, img, r, b, &mut self.in_buf)),
            };
            let feeds = [(self.input.as_str(), &shape[..], feed)];
            let s = self.graph.run(&feeds, &self.output, &mut self.out_buf)?;
            calls += 1;
            let channels = s.get(1).copied().unwrap_or(0);
            let form = match channels {
                4 => LatentForm::Sample,
                8 => LatentForm::Parameters,
                _ => {
                    return Err(EngineError::tensor(
                        &self.graph.file,
                        &self.output,
                        format!("[{b}, 4 or 8, {lh}, {lw}]"),
                        shape_str(&s),
                    ));
                }
            };
            if s.len() != 4 || s[0] != b as i64 || s[2] != lh as i64 || s[3] != lw as i64 {
                return Err(EngineError::tensor(
                    &self.graph.file,
                    &self.output,
                    format!("[{b}, 4 or 8, {lh}, {lw}] (the image size / 8)"),
                    shape_str(&s),
                ));
            }
            if let Some(d) = self.declared_form
                && d != form
            {
                return Err(EngineError::tensor(
                    &self.graph.file,
                    &self.output,
                    format!("{d:?} as declared"),
                    shape_str(&s),
                ));
            }
            let per = channels as usize * lh * lw;
            for i in 0..n {
                // The mean is the first 4 channels of each row.
                out[(r0 + i) * lat..(r0 + i + 1) * lat]
                    .copy_from_slice(&self.out_buf[i * per..i * per + lat]);
            }
        }
        Ok(calls)
    }
}

#[derive(Debug)]
pub struct VaeDecoder {
    pub graph: Graph,
    /// The element type of its output.
    elem: Elem,
    pub fixed_batch: Option<usize>,
    /// Rows per call of a dynamic-batch graph: the engine's batch size. Frames that finish
    /// together after a drain are decoded in calls of this size, not in one larger call
    /// whose shape would grow ONNX Runtime's memory arena for good.
    max_rows: usize,
    input: String,
    output: String,
    height: usize,
    width: usize,
    in_buf: Vec<f32>,
}

impl VaeDecoder {
    fn bind(graph: Graph, opts: &LoadOptions) -> Result<Self, EngineError> {
        let (h, w) = (opts.height as usize, opts.width as usize);
        // `latent` in ONNX Runtime's demo export.
        let name = if graph.input("latent").is_some() {
            "latent"
        } else {
            "latent_sample"
        };
        let input = graph.require_input(name, "latents [batch, 4, h, w]")?;
        graph.no_other_inputs(&[name])?;
        check_image_like(&graph.file, &input, 4, h / 8, w / 8, opts, "latent")?;
        if !input.elem.is_float() {
            return Err(EngineError::tensor(
                &graph.file,
                name,
                "float32 or float16",
                input.to_string(),
            ));
        }
        let out = graph.pick_output(&["sample", "images"], "image [batch, 3, H, W] in [-1, 1]")?;
        if out.rank() != 4 || !out.elem.is_float() || out.dim(1).is_some_and(|c| c != 3) {
            return Err(EngineError::tensor(
                &graph.file,
                &out.name,
                "float [batch, 3, H, W]",
                out.to_string(),
            ));
        }
        Ok(VaeDecoder {
            elem: out.elem,
            fixed_batch: input.dim(0),
            max_rows: opts.batch_size.max(1),
            input: input.name.clone(),
            output: out.name.clone(),
            graph,
            height: h,
            width: w,
            in_buf: Vec::new(),
        })
    }

    /// The shape of one frame's latents: `[1, 4, height / 8, width / 8]`.
    pub fn latent_shape(&self) -> [usize; 4] {
        [1, 4, self.height / 8, self.width / 8]
    }

    /// Opens only the decoder of a model directory (`i2idecode`): `vae_decoder/model.onnx`
    /// at the picture size `opts.width` x `opts.height`, on the first execution provider
    /// that takes it.
    pub fn load(opts: &LoadOptions) -> Result<VaeDecoder, EngineError> {
        let file = opts.model_dir.join("vae_decoder").join("model.onnx");
        if !file.is_file() {
            return Err(EngineError::missing(
                &file,
                "the VAE decoder (vae_decoder/model.onnx)",
            ));
        }
        let env = crate::runtime::environment()?;
        let mut last_err = None;
        for provider in candidates(opts.execution_provider)? {
            let factory = SessionFactory {
                env: env.clone(),
                provider,
                intra_threads: opts.intra_threads,
                device_id: opts.device_id,
                fp16: opts.fp16,
                cache_dir: opts.engine_cache_dir.clone(),
                cpu_arena: opts.cpu_arena,
            };
            match factory
                .open(&file, None)
                .and_then(|g| VaeDecoder::bind(g, opts))
            {
                Ok(d) => return Ok(d),
                Err(e @ EngineError::Provider { .. })
                    if opts.execution_provider == ExecutionProvider::Auto =>
                {
                    last_err = Some(e)
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| EngineError::invalid(&file, "no execution provider")))
    }

    /// Decodes latents `[rows, 4, h, w]` into `out[row]`, one `[1, 3, H, W]` tensor per
    /// image (raw decoder output in [-1, 1]); an `out` entry that is `None` or shared is
    /// replaced by a new tensor. With one image per call and a float32 output, ONNX Runtime
    /// writes straight into that tensor (no copy); otherwise the images are copied there.
    pub fn decode(
        &mut self,
        latents: &[f32],
        rows: usize,
        out: &mut [Option<Arc<Tensor<f32>>>],
    ) -> Result<usize, EngineError> {
        let (lh, lw) = (self.height / 8, self.width / 8);
        let lat = 4 * lh * lw;
        let img = 3 * self.height * self.width;
        let mut calls = 0;
        for Chunk { rows: r, batch: b } in chunks_at_most(0..rows, self.fixed_batch, self.max_rows)
        {
            let (r0, n) = (r.start, r.len());
            let data = rows_padded(latents, lat, r, b, &mut self.in_buf);
            let shape = [b as i64, 4, lh as i64, lw as i64];
            let feeds = [(self.input.as_str(), &shape[..], Feed::F32(data))];
            let want = [b as i64, 3, self.height as i64, self.width as i64];
            let (height, width) = (self.height, self.width);
            if b == 1 && self.elem == Elem::F32 {
                // Straight into the frame's tensor.
                let t = frame_tensor(&mut out[r0], height, width, &self.graph.file)?;
                self.graph.run_into(&feeds, &self.output, t)?;
                calls += 1;
                continue;
            }
            let file = self.graph.file.clone();
            let output = &self.output;
            self.graph.run_with(&feeds, output, |s, y| {
                if s != want {
                    return Err(EngineError::tensor(
                        &file,
                        output,
                        shape_str(&want),
                        shape_str(s),
                    ));
                }
                for i in 0..n {
                    let t = frame_tensor(&mut out[r0 + i], height, width, &file)?;
                    t.extract_tensor_mut()
                        .1
                        .copy_from_slice(&y[i * img..(i + 1) * img]);
                }
                Ok(())
            })??;
            calls += 1;
        }
        Ok(calls)
    }
}

/// The `[1, 3, height, width]` tensor `slot` holds, made (or replaced, when shared) as
/// needed.
fn frame_tensor<'a>(
    slot: &'a mut Option<Arc<Tensor<f32>>>,
    height: usize,
    width: usize,
    file: &Path,
) -> Result<&'a mut Tensor<f32>, EngineError> {
    if slot.as_mut().and_then(Arc::get_mut).is_none() {
        let t = Tensor::<f32>::new(&Allocator::default(), [1, 3, height, width])
            .map_err(|e| EngineError::inference(file, e))?;
        *slot = Some(Arc::new(t));
    }
    slot.as_mut()
        .and_then(Arc::get_mut)
        .ok_or_else(|| EngineError::invalid(file, "a decoder output buffer is shared"))
}

/// The text conditioning of a model: one CLIP text encoder (SD 1.x / 2.x) or SDXL's two.
#[derive(Debug)]
pub enum Text {
    Clip(Box<TextEncoder>),
    Xl(Box<XlText>),
}

impl Text {
    /// The conditioning of a prompt, `[1, rows, E]`.
    pub fn encode(&mut self, text: &str, out: &mut Vec<f32>) -> Result<[usize; 3], EngineError> {
        match self {
            Text::Clip(t) => t.encode(text, out),
            Text::Xl(t) => t.encode(text, out),
        }
    }

    /// The conditioning of a negative prompt (SDXL: zeros for an empty one, see the module
    /// header).
    pub fn encode_negative(
        &mut self,
        text: &str,
        out: &mut Vec<f32>,
    ) -> Result<[usize; 3], EngineError> {
        match self {
            Text::Clip(t) => t.encode(text, out),
            Text::Xl(t) => t.encode_negative(text, out),
        }
    }

    /// The (first) text encoder's graph file, for messages.
    pub fn file(&self) -> &Path {
        match self {
            Text::Clip(t) => &t.graph.file,
            Text::Xl(t) => t.files()[0],
        }
    }
}

/// Checks the bound UNet against the text encoders (SDXL) (`pooled`: the size of text_encoder_2's
/// pooled output) and tells it the pooled size.
fn check_xl_unet(unet: &mut Unet, text: &Text, pooled: usize) -> Result<(), EngineError> {
    let Some(xl) = &unet.xl else {
        return Ok(());
    };
    let Text::Xl(t) = text else {
        return Err(EngineError::tensor(
            &unet.graph.file,
            "text_embeds",
            "a UNet without 'text_embeds' (one text encoder)",
            "an SDXL UNet",
        ));
    };
    if let Some(d) = xl.pooled_declared
        && d != pooled
    {
        let spec = unet
            .graph
            .input("text_embeds")
            .map(ToString::to_string)
            .unwrap_or_default();
        return Err(EngineError::tensor(
            &unet.graph.file,
            "text_embeds",
            format!(
                "[batch, {pooled}] (the size of the pooled output of {})",
                t.files()[1].display()
            ),
            format!("{spec}: {d} values (text encoder and UNet do not belong together)"),
        ));
    }
    unet.pooled_size = pooled;
    Ok(())
}

/// Everything loaded from a model directory.
#[derive(Debug)]
pub struct Model {
    pub dir: PathBuf,
    pub text: Text,
    pub unet: Unet,
    pub vae_encoder: VaeEncoder,
    pub vae_decoder: VaeDecoder,
    pub scheduler: SchedulerConfig,
    /// Latent scaling factor (1.0 for AutoencoderTiny / TAESD).
    pub scaling_factor: f32,
    pub provider: ExecutionProvider,
}

/// Reads `scaling_factor` from vae_decoder/config.json (or vae_encoder/config.json).
pub fn read_scaling_factor(dir: &Path) -> Result<f32, EngineError> {
    let mut tried = Vec::new();
    for sub in ["vae_decoder", "vae_encoder", "vae"] {
        let path = dir.join(sub).join("config.json");
        if !path.is_file() {
            tried.push(path);
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| EngineError::invalid(&path, format!("cannot read: {e}")))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| EngineError::invalid(&path, format!("invalid JSON: {e}")))?;
        let class = v.get("_class_name").and_then(Value::as_str).unwrap_or("");
        return match v.get("scaling_factor") {
            Some(Value::Number(n)) => {
                let f = n.as_f64().unwrap_or(0.0);
                if f > 0.0 && f.is_finite() {
                    Ok(f as f32)
                } else {
                    Err(EngineError::config(
                        &path,
                        "scaling_factor",
                        "a positive number",
                        n.to_string(),
                    ))
                }
            }
            None | Some(Value::Null) if class == "AutoencoderTiny" => Ok(1.0),
            // diffusers' AutoencoderKL default.
            None | Some(Value::Null) => Ok(0.18215),
            Some(other) => Err(EngineError::config(
                &path,
                "scaling_factor",
                "a number",
                other.to_string(),
            )),
        };
    }
    Err(EngineError::missing(
        &tried[0],
        "VAE config (for scaling_factor)",
    ))
}

fn graph_file(dir: &Path, sub: &str) -> Result<PathBuf, EngineError> {
    let d = dir.join(sub);
    if !d.is_dir() {
        return Err(EngineError::missing(
            &d,
            format!("{sub} directory (diffusers / optimum ONNX layout)"),
        ));
    }
    let f = d.join("model.onnx");
    if !f.is_file() {
        return Err(EngineError::missing(&f, "ONNX graph"));
    }
    Ok(f)
}

/// Largest UNet batch the stream can ask for: `n * batch * 2` (full CFG).
pub fn max_unet_rows(n: usize, batch: usize) -> usize {
    (n * batch * 2).max(n * batch + batch)
}

impl Model {
    /// Loads the model for `opts`; `unet_rows = (typical, maximum)` sizes the TensorRT
    /// profiles; `prompt` is encoded once to learn the hidden size.
    pub fn load(
        opts: &LoadOptions,
        unet_rows: (usize, usize),
        prompt: &str,
    ) -> Result<(Model, Vec<f32>, [usize; 3]), EngineError> {
        let dir = opts.model_dir.clone();
        if dir.is_file() {
            return Err(EngineError::invalid(
                &dir,
                "is a file: the model is the directory that holds text_encoder/, tokenizer/, unet/, vae_encoder/, vae_decoder/ and scheduler/ (the diffusers / optimum ONNX layout), e.g. models/demo",
            ));
        }
        if !dir.is_dir() {
            return Err(EngineError::missing(&dir, "model directory"));
        }
        if opts.width == 0
            || opts.height == 0
            || !opts.width.is_multiple_of(8)
            || !opts.height.is_multiple_of(8)
        {
            return Err(EngineError::argument(
                "width/height",
                "positive multiples of 8",
                format!("{}x{}", opts.width, opts.height),
            ));
        }
        if opts.batch_size == 0 {
            return Err(EngineError::argument("batch-size", "at least 1", "0"));
        }
        // Everything that can be checked without ONNX Runtime first.
        let scheduler =
            SchedulerConfig::from_file(&dir.join("scheduler").join("scheduler_config.json"))?;
        let tokenizer = ClipTokenizer::from_dir(&dir.join("tokenizer"))?;
        let files = [
            graph_file(&dir, "text_encoder")?,
            graph_file(&dir, "unet")?,
            graph_file(&dir, "vae_encoder")?,
            graph_file(&dir, "vae_decoder")?,
        ];
        let xl = sdxl::check_family(&dir, &files[1])?;
        let scaling_factor = match read_scaling_factor(&dir) {
            Err(EngineError::MissingFile { .. }) if xl.is_some() => sdxl::SDXL_SCALING_FACTOR,
            r => r?,
        };
        let env = crate::runtime::environment()?;
        let candidates = candidates(opts.execution_provider)?;
        let mut last_err = None;
        for provider in candidates {
            let cache_dir = if provider == ExecutionProvider::TensorRt {
                // Refused before any engine is built (with auto too: not passed over to CUDA).
                opts.trt_profile.check(opts.width, opts.height)?;
                Some(trt_cache_dir(opts, &files, unet_rows)?)
            } else {
                None
            };
            let factory = SessionFactory {
                env: env.clone(),
                provider,
                intra_threads: opts.intra_threads,
                device_id: opts.device_id,
                fp16: opts.fp16,
                cache_dir,
                cpu_arena: opts.cpu_arena,
            };
            let text = (tokenizer.clone(), xl.clone());
            match Self::open_all(opts, &factory, &files, unet_rows, text, prompt) {
                Ok((text, unet, vae_encoder, vae_decoder, emb, shape)) => {
                    if opts.execution_provider == ExecutionProvider::Auto {
                        log(
                            LogLevel::Info,
                            &format!("execution provider: {provider} (auto)"),
                        );
                    } else {
                        log(LogLevel::Info, &format!("execution provider: {provider}"));
                    }
                    return Ok((
                        Model {
                            dir,
                            text,
                            unet,
                            vae_encoder,
                            vae_decoder,
                            scheduler,
                            scaling_factor,
                            provider,
                        },
                        emb,
                        shape,
                    ));
                }
                Err(e @ EngineError::Provider { .. })
                    if opts.execution_provider == ExecutionProvider::Auto =>
                {
                    log(
                        LogLevel::Warning,
                        &format!("{e}; trying the next execution provider"),
                    );
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| {
            provider_error(opts.execution_provider, "no provider could be used".into())
        }))
    }

    #[allow(clippy::type_complexity)]
    fn open_all(
        opts: &LoadOptions,
        factory: &SessionFactory,
        files: &[PathBuf; 4],
        unet_rows: (usize, usize),
        (tokenizer, xl): (ClipTokenizer, Option<sdxl::XlFiles>),
        prompt: &str,
    ) -> Result<(Text, Unet, VaeEncoder, VaeDecoder, Vec<f32>, [usize; 3]), EngineError> {
        let (h, w) = (opts.height as usize, opts.width as usize);
        let (lh, lw) = (h / 8, w / 8);
        let bs = opts.batch_size;
        let trt = factory.provider == ExecutionProvider::TensorRt;
        // Image and latent sides (height, width) at the profile's min, opt and max.
        let [im0, im1, im2] = opts.trt_profile.hw(1);
        let [la0, la1, la2] = opts.trt_profile.hw(8);
        // Profiles name the inputs the graph declares with a dynamic dimension, at the
        // graph's rank (a scalar timestep is left out); read from the file, since the
        // session does not exist yet.
        let profile = |file: &Path, parts: &[ProfilePart<'_>]| -> Result<TrtProfile, EngineError> {
            if trt {
                trt_profile(file, parts)
            } else {
                Ok(TrtProfile::default())
            }
        };
        let seq = tokenizer.max_length();
        let text_profile = profile(
            &files[0],
            &[("input_ids", vec![1, seq], vec![1, seq], vec![1, seq])],
        )?;
        if trt {
            log(
                LogLevel::Info,
                "TensorRT: building or loading engines; the first build for a model, size and batch can take several minutes",
            );
        }
        let text_graph = factory.open(&files[0], trt.then_some(&text_profile))?;
        let mut text = match &xl {
            None => Text::Clip(Box::new(TextEncoder::bind(text_graph, tokenizer)?)),
            Some(x) => {
                let p2 = profile(
                    &x.text_encoder_2,
                    &[("input_ids", vec![1, seq], vec![1, seq], vec![1, seq])],
                )?;
                let g2 = factory.open(&x.text_encoder_2, trt.then_some(&p2))?;
                Text::Xl(Box::new(XlText::bind(
                    (text_graph, tokenizer),
                    (g2, x.tokenizer_2.clone()),
                    x.force_zeros,
                )?))
            }
        };
        let mut emb = Vec::new();
        let shape = text.encode(prompt, &mut emb)?;
        let e = shape[2];
        // SDXL: the pooled vector rides in the last rows (see sdxl.rs); L is the sequence.
        let pooled = match &text {
            Text::Xl(t) => t.pooled_size(),
            Text::Clip(_) => 0,
        };
        let l = shape[1] - sdxl::pooled_rows(pooled, e);
        let (typ, max) = unet_rows;
        // Fused ControlNet graphs: the control images follow the rows (TensorRT only needs
        // the count, read from the file, for the profile).
        let controlnets = if trt {
            crate::runtime::onnx_proto::graph_inputs(&files[1])
                .ok()
                .and_then(|ins| {
                    ins.into_iter()
                        .find(|d| CONTROLNET_IMAGES.contains(&d.name.as_str()))
                        .and_then(|d| d.dims.first().copied().flatten())
                })
                .unwrap_or(0) as usize
        } else {
            0
        };
        // An IP-Adapter UNet takes its N image tokens after the L text rows (fixed 77 + N).
        let l = if trt {
            crate::runtime::onnx_proto::graph_inputs(&files[1])
                .ok()
                .and_then(|ins| {
                    ins.into_iter()
                        .find(|d| d.name == "encoder_hidden_states")
                        .and_then(|d| d.dims.get(1).copied().flatten())
                })
                .map_or(l, |rows| (rows as usize).max(l))
        } else {
            l
        };
        let control_part = |name| {
            (
                name,
                vec![controlnets, 1, 3, im0.0, im0.1],
                vec![controlnets, typ, 3, im1.0, im1.1],
                vec![controlnets, max, 3, im2.0, im2.1],
            )
        };
        let unet_profile = profile(
            &files[1],
            &[
                control_part(CONTROLNET_IMAGES[0]),
                control_part(CONTROLNET_IMAGES[1]),
                (
                    "sample",
                    vec![1, 4, la0.0, la0.1],
                    vec![typ, 4, la1.0, la1.1],
                    vec![max, 4, la2.0, la2.1],
                ),
                ("timestep", vec![1], vec![typ], vec![max]),
                (
                    "encoder_hidden_states",
                    vec![1, l, e],
                    vec![typ, l, e],
                    vec![max, l, e],
                ),
                (
                    "text_embeds",
                    vec![1, pooled],
                    vec![typ, pooled],
                    vec![max, pooled],
                ),
                (
                    "time_ids",
                    vec![1, sdxl::TIME_IDS],
                    vec![typ, sdxl::TIME_IDS],
                    vec![max, sdxl::TIME_IDS],
                ),
            ],
        )?;
        let unet_graph = factory.open(&files[1], trt.then_some(&unet_profile))?;
        let mut unet = Unet::bind(unet_graph, lh, lw, opts)?;
        check_xl_unet(&mut unet, &text, pooled)?;
        if let Some(he) = unet.hidden_size
            && he != e
        {
            return Err(EngineError::tensor(
                &unet.graph.file,
                "encoder_hidden_states",
                match &text {
                    Text::Clip(_) => format!("hidden size {e} (text_encoder's last_hidden_state)"),
                    Text::Xl(_) => format!(
                        "hidden size {e} (text_encoder's and text_encoder_2's hidden states, concatenated)"
                    ),
                },
                format!("{he} (text encoder and UNet do not belong together)"),
            ));
        }
        let enc_profile = profile(
            &files[2],
            &[
                (
                    "sample",
                    vec![1, 3, im0.0, im0.1],
                    vec![bs, 3, im1.0, im1.1],
                    vec![bs, 3, im2.0, im2.1],
                ),
                (
                    "images",
                    vec![1, 3, im0.0, im0.1],
                    vec![bs, 3, im1.0, im1.1],
                    vec![bs, 3, im2.0, im2.1],
                ),
            ],
        )?;
        let vae_encoder =
            VaeEncoder::bind(factory.open(&files[2], trt.then_some(&enc_profile))?, opts)?;
        let dec_profile = profile(
            &files[3],
            &[
                (
                    "latent_sample",
                    vec![1, 4, la0.0, la0.1],
                    vec![bs, 4, la1.0, la1.1],
                    vec![bs, 4, la2.0, la2.1],
                ),
                (
                    "latent",
                    vec![1, 4, la0.0, la0.1],
                    vec![bs, 4, la1.0, la1.1],
                    vec![bs, 4, la2.0, la2.1],
                ),
            ],
        )?;
        let vae_decoder =
            VaeDecoder::bind(factory.open(&files[3], trt.then_some(&dec_profile))?, opts)?;
        Ok((text, unet, vae_encoder, vae_decoder, emb, shape))
    }
}
