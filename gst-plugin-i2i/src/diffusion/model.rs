// SPDX-License-Identifier: MPL-2.0
//! The four ONNX sessions of a diffusers / optimum model directory, bound by name, with
//! the element types and ranks read from the sessions and casts at the boundary.
//!
//! Variants handled (see the notes on model files):
//! * text_encoder `input_ids` int64 or int32 `[B, 77]` -> `last_hidden_state` `[B, 77, E]`;
//! * unet `sample`, `timestep` (int64 / int32 / float32 / float16, rank 1 `[B]` or rank 0),
//!   `encoder_hidden_states` -> `out_sample` or `latent` (or the single output);
//! * vae_encoder `sample` -> `latent_sample` (4 channels) or `latent_parameters`
//!   (8 channels: mean and log-variance; the mean is used);
//! * vae_decoder `latent_sample` -> `sample`;
//! * float32 or float16 graphs; a dynamic batch dimension, or a fixed one (rows are then
//!   sent in chunks of that size).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use half::f16;
use half::slice::HalfFloatSliceExt;
use ort::ep;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{TensorElementType, TensorRef, ValueType};
use serde_json::Value;

use super::runtime::{LogLevel, log};
use super::scheduler::SchedulerConfig;
use super::sdxl::{self, Text, UnetXl, XlText};
use super::tokenizer::ClipTokenizer;
use super::{EngineError, ExecutionProvider, LoadOptions};

/// Element types the engine can feed or read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    F32,
    F16,
    I64,
    I32,
}

impl Elem {
    fn from_ort(t: TensorElementType) -> Option<Elem> {
        match t {
            TensorElementType::Float32 => Some(Elem::F32),
            TensorElementType::Float16 => Some(Elem::F16),
            TensorElementType::Int64 => Some(Elem::I64),
            TensorElementType::Int32 => Some(Elem::I32),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Elem::F32 => "float32",
            Elem::F16 => "float16",
            Elem::I64 => "int64",
            Elem::I32 => "int32",
        }
    }

    pub(super) fn is_float(self) -> bool {
        matches!(self, Elem::F32 | Elem::F16)
    }
}

/// A graph input or output as the session declares it (`-1` for a dynamic dimension).
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub name: String,
    pub elem: Elem,
    pub shape: Vec<i64>,
}

impl Spec {
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// The fixed size of dimension `d`, if the graph fixes it.
    pub fn dim(&self, d: usize) -> Option<usize> {
        self.shape
            .get(d)
            .and_then(|&v| (v >= 0).then_some(v as usize))
    }
}

fn shape_str(shape: &[i64]) -> String {
    let dims: Vec<String> = shape
        .iter()
        .map(|&d| {
            if d < 0 {
                "?".to_string()
            } else {
                d.to_string()
            }
        })
        .collect();
    format!("[{}]", dims.join(", "))
}

impl std::fmt::Display for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.elem.name(), shape_str(&self.shape))
    }
}

/// Data handed to a graph input; converted to the declared element type.
pub enum Feed<'a> {
    F32(&'a [f32]),
    I64(&'a [i64]),
}

/// One ONNX session and its declared inputs and outputs.
pub struct Graph {
    pub file: PathBuf,
    session: Session,
    pub inputs: Vec<Spec>,
    pub outputs: Vec<Spec>,
    scratch_f16: Vec<Vec<f16>>,
    scratch_f32: Vec<Vec<f32>>,
    scratch_i64: Vec<Vec<i64>>,
    scratch_i32: Vec<Vec<i32>>,
    scratch_out: Vec<f32>,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("file", &self.file)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish()
    }
}

fn specs(file: &Path, list: &[ort::value::Outlet], what: &str) -> Result<Vec<Spec>, EngineError> {
    list.iter()
        .map(|o| match o.dtype() {
            ValueType::Tensor { ty, shape, .. } => {
                let elem = Elem::from_ort(*ty).ok_or_else(|| {
                    EngineError::tensor(
                        file,
                        o.name(),
                        format!("a float32, float16, int64 or int32 {what}"),
                        format!("element type {ty}"),
                    )
                })?;
                Ok(Spec {
                    name: o.name().to_string(),
                    elem,
                    shape: shape.iter().copied().collect(),
                })
            }
            other => Err(EngineError::tensor(
                file,
                o.name(),
                format!("a tensor {what}"),
                other.to_string(),
            )),
        })
        .collect()
}

impl Graph {
    fn new(file: PathBuf, session: Session) -> Result<Graph, EngineError> {
        let inputs = specs(&file, session.inputs(), "input")?;
        let outputs = specs(&file, session.outputs(), "output")?;
        Ok(Graph {
            file,
            session,
            inputs,
            outputs,
            scratch_f16: Vec::new(),
            scratch_f32: Vec::new(),
            scratch_i64: Vec::new(),
            scratch_i32: Vec::new(),
            scratch_out: Vec::new(),
        })
    }

    pub fn input(&self, name: &str) -> Option<&Spec> {
        self.inputs.iter().find(|s| s.name == name)
    }

    pub fn output(&self, name: &str) -> Option<&Spec> {
        self.outputs.iter().find(|s| s.name == name)
    }

    pub(super) fn require_input(&self, name: &str, what: &str) -> Result<Spec, EngineError> {
        self.input(name).cloned().ok_or_else(|| {
            let found: Vec<&str> = self.inputs.iter().map(|s| s.name.as_str()).collect();
            EngineError::tensor(
                &self.file,
                name,
                format!("an input named '{name}' ({what})"),
                format!("inputs {found:?}"),
            )
        })
    }

    /// The output named one of `names`, else the only output.
    fn pick_output(&self, names: &[&str], what: &str) -> Result<Spec, EngineError> {
        for n in names {
            if let Some(s) = self.output(n) {
                return Ok(s.clone());
            }
        }
        if self.outputs.len() == 1 {
            return Ok(self.outputs[0].clone());
        }
        let found: Vec<&str> = self.outputs.iter().map(|s| s.name.as_str()).collect();
        Err(EngineError::tensor(
            &self.file,
            names.join("' or '"),
            format!("an output named '{}' ({what})", names.join("' or '")),
            format!("outputs {found:?}"),
        ))
    }

    /// Every input must be one the engine feeds.
    pub(super) fn no_other_inputs(&self, known: &[&str]) -> Result<(), EngineError> {
        for s in &self.inputs {
            if !known.contains(&s.name.as_str()) {
                return Err(EngineError::tensor(
                    &self.file,
                    &s.name,
                    format!("only the inputs {known:?}"),
                    format!(
                        "an extra input '{}' {s} (this model type is not supported)",
                        s.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Runs the graph on `feeds` (name, shape, data) and writes output `output` as float32
    /// into `out`; returns the output's shape.
    pub fn run(
        &mut self,
        feeds: &[(&str, &[i64], Feed<'_>)],
        output: &str,
        out: &mut Vec<f32>,
    ) -> Result<Vec<i64>, EngineError> {
        self.run_with(feeds, output, |shape, data| {
            out.clear();
            out.extend_from_slice(data);
            shape.to_vec()
        })
    }

    /// Like [`Graph::run`], but hands the output (shape, float32 data) to `f` without
    /// copying it first (float16 outputs are converted into a reused buffer).
    pub fn run_with<R>(
        &mut self,
        feeds: &[(&str, &[i64], Feed<'_>)],
        output: &str,
        f: impl FnOnce(&[i64], &[f32]) -> R,
    ) -> Result<R, EngineError> {
        let Graph {
            file,
            session,
            inputs,
            scratch_f16,
            scratch_f32,
            scratch_i64,
            scratch_i32,
            scratch_out,
            ..
        } = self;
        let n = feeds.len();
        scratch_f16.resize_with(n, Vec::new);
        scratch_f32.resize_with(n, Vec::new);
        scratch_i64.resize_with(n, Vec::new);
        scratch_i32.resize_with(n, Vec::new);
        let mut elems = Vec::with_capacity(n);
        // Casts first, into per-input scratch buffers kept across calls.
        for (i, (name, _, feed)) in feeds.iter().enumerate() {
            let spec = inputs
                .iter()
                .find(|s| s.name == *name)
                .ok_or_else(|| EngineError::tensor(file, *name, "an input of this name", "none"))?;
            match (feed, spec.elem) {
                (Feed::F32(_), Elem::F32) | (Feed::I64(_), Elem::I64) => {}
                (Feed::F32(d), Elem::F16) => {
                    let s = &mut scratch_f16[i];
                    s.resize(d.len(), f16::ZERO);
                    s.convert_from_f32_slice(d);
                }
                (Feed::F32(d), Elem::I64) => {
                    let s = &mut scratch_i64[i];
                    s.clear();
                    s.extend(d.iter().map(|&v| v.round() as i64));
                }
                (Feed::F32(d), Elem::I32) => {
                    let s = &mut scratch_i32[i];
                    s.clear();
                    s.extend(d.iter().map(|&v| v.round() as i32));
                }
                (Feed::I64(d), Elem::I32) => {
                    let s = &mut scratch_i32[i];
                    s.clear();
                    s.extend(d.iter().map(|&v| v as i32));
                }
                (Feed::I64(d), Elem::F32) => {
                    let s = &mut scratch_f32[i];
                    s.clear();
                    s.extend(d.iter().map(|&v| v as f32));
                }
                (Feed::I64(d), Elem::F16) => {
                    let s = &mut scratch_f16[i];
                    s.clear();
                    s.extend(d.iter().map(|&v| f16::from_f32(v as f32)));
                }
            }
            elems.push(spec.elem);
        }
        let ort_err = |e: ort::Error| EngineError::inference(file, e);
        let mut values: Vec<(String, SessionInputValue<'_>)> = Vec::with_capacity(n);
        for (i, ((name, shape, feed), elem)) in feeds.iter().zip(&elems).enumerate() {
            let shape = shape.to_vec();
            let v: SessionInputValue<'_> = match (feed, elem) {
                (Feed::F32(d), Elem::F32) => TensorRef::from_array_view((shape, *d))
                    .map_err(ort_err)?
                    .into(),
                (Feed::I64(d), Elem::I64) => TensorRef::from_array_view((shape, *d))
                    .map_err(ort_err)?
                    .into(),
                (_, Elem::F16) => TensorRef::from_array_view((shape, &scratch_f16[i][..]))
                    .map_err(ort_err)?
                    .into(),
                (_, Elem::F32) => TensorRef::from_array_view((shape, &scratch_f32[i][..]))
                    .map_err(ort_err)?
                    .into(),
                (_, Elem::I64) => TensorRef::from_array_view((shape, &scratch_i64[i][..]))
                    .map_err(ort_err)?
                    .into(),
                (_, Elem::I32) => TensorRef::from_array_view((shape, &scratch_i32[i][..]))
                    .map_err(ort_err)?
                    .into(),
            };
            values.push((name.to_string(), v));
        }
        let outputs = session.run(values).map_err(ort_err)?;
        let value = outputs.get(output).ok_or_else(|| {
            EngineError::tensor(
                file,
                output,
                "an output of this name",
                "none in the results",
            )
        })?;
        let ty = value.dtype().tensor_type();
        let shape: Vec<i64> = match value.dtype().tensor_shape() {
            Some(s) => s.iter().copied().collect(),
            None => Vec::new(),
        };
        match ty {
            Some(TensorElementType::Float32) => {
                let (_, d) = value.try_extract_tensor::<f32>().map_err(ort_err)?;
                Ok(f(&shape, d))
            }
            Some(TensorElementType::Float16) => {
                let (_, d) = value.try_extract_tensor::<f16>().map_err(ort_err)?;
                scratch_out.resize(d.len(), 0.0);
                d.convert_to_f32_slice(scratch_out);
                Ok(f(&shape, scratch_out))
            }
            other => Err(EngineError::tensor(
                file,
                output,
                "a float32 or float16 output",
                format!("{other:?}"),
            )),
        }
    }
}

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

    /// Hidden states `[1, seq_len, E]` for `text`.
    pub fn encode(&mut self, text: &str, out: &mut Vec<f32>) -> Result<[usize; 3], EngineError> {
        let ids = self.tokenizer.encode(text);
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
        let mut known = vec!["sample", "timestep", "encoder_hidden_states"];
        if xl.is_some() {
            known.extend(sdxl::UNET_INPUTS);
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
            &["out_sample", "latent"],
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
    /// `hidden` `[rows, L, E]`, into `out` `[rows, 4, h, w]`. Splits into calls as the
    /// graph needs (scalar timestep: one call per run of equal timesteps; fixed batch:
    /// chunks of that size, the last one padded by repeating its last row). Returns the
    /// number of graph calls.
    pub fn predict(
        &mut self,
        sample: &[f32],
        timesteps: &[f32],
        hidden: &[f32],
        seq: [usize; 2],
        out: &mut Vec<f32>,
    ) -> Result<usize, EngineError> {
        let rows = timesteps.len();
        let lat = 4 * self.latent_h * self.latent_w;
        let hid = seq[0] * seq[1];
        out.resize(rows * lat, 0.0);
        // Runs of rows that may share a call.
        let mut groups: Vec<(usize, usize)> = Vec::new();
        let mut start = 0;
        for r in 1..=rows {
            let split = r == rows
                || (self.timestep_form != TimestepForm::PerRow && timesteps[r] != timesteps[start]);
            if split {
                groups.push((start, r));
                start = r;
            }
        }
        let mut calls = 0;
        for (g0, g1) in groups {
            let chunk = self.fixed_batch.unwrap_or(g1 - g0).max(1);
            let mut r0 = g0;
            while r0 < g1 {
                let r1 = (r0 + chunk).min(g1);
                let n = r1 - r0;
                let b = chunk.max(n);
                let s_in = rows_padded(sample, lat, r0..r1, b, &mut self.sample_buf);
                let h_in = rows_padded(hidden, hid, r0..r1, b, &mut self.hidden_buf);
                let t_in = rows_padded(timesteps, 1, r0..r1, b, &mut self.time_buf);
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
                // SDXL: the packed rows become encoder_hidden_states, text_embeds, time_ids.
                if let Some(xl) = self.xl.as_mut() {
                    h_shape[1] = xl.split(h_in, b, seq, p) as i64;
                    feeds.push((
                        "encoder_hidden_states",
                        &h_shape[..],
                        Feed::F32(xl.hidden()),
                    ));
                    feeds.push(("text_embeds", &p_shape[..], Feed::F32(xl.pooled())));
                    feeds.push(("time_ids", &id_shape[..], Feed::F32(xl.time_ids())));
                } else {
                    feeds.push(("encoder_hidden_states", &h_shape[..], Feed::F32(h_in)));
                }
                let dst = &mut out[r0 * lat..r1 * lat];
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
                r0 = r1;
            }
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

#[derive(Debug)]
pub struct VaeEncoder {
    pub graph: Graph,
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
        images: &[f32],
        rows: usize,
        out: &mut Vec<f32>,
    ) -> Result<usize, EngineError> {
        let img = 3 * self.height * self.width;
        let (lh, lw) = (self.height / 8, self.width / 8);
        let lat = 4 * lh * lw;
        out.resize(rows * lat, 0.0);
        let chunk = self.fixed_batch.unwrap_or(rows).max(1);
        let mut calls = 0;
        let mut r0 = 0;
        while r0 < rows {
            let r1 = (r0 + chunk).min(rows);
            let n = r1 - r0;
            let b = chunk.max(n);
            let data = rows_padded(images, img, r0..r1, b, &mut self.in_buf);
            let shape = [b as i64, 3, self.height as i64, self.width as i64];
            let feeds = [(self.input.as_str(), &shape[..], Feed::F32(data))];
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
            r0 = r1;
        }
        Ok(calls)
    }
}

#[derive(Debug)]
pub struct VaeDecoder {
    pub graph: Graph,
    pub fixed_batch: Option<usize>,
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
            fixed_batch: input.dim(0),
            input: input.name.clone(),
            output: out.name.clone(),
            graph,
            height: h,
            width: w,
            in_buf: Vec::new(),
        })
    }

    /// Calls `sink(row, image)` for each decoded image `[3, H, W]` (raw decoder output in
    /// [-1, 1]) of latents `[rows, 4, h, w]`.
    pub fn decode(
        &mut self,
        latents: &[f32],
        rows: usize,
        mut sink: impl FnMut(usize, &[f32]),
    ) -> Result<usize, EngineError> {
        let (lh, lw) = (self.height / 8, self.width / 8);
        let lat = 4 * lh * lw;
        let img = 3 * self.height * self.width;
        let chunk = self.fixed_batch.unwrap_or(rows).max(1);
        let mut calls = 0;
        let mut r0 = 0;
        while r0 < rows {
            let r1 = (r0 + chunk).min(rows);
            let n = r1 - r0;
            let b = chunk.max(n);
            let data = rows_padded(latents, lat, r0..r1, b, &mut self.in_buf);
            let shape = [b as i64, 4, lh as i64, lw as i64];
            let feeds = [(self.input.as_str(), &shape[..], Feed::F32(data))];
            let want = [b as i64, 3, self.height as i64, self.width as i64];
            // The decoded images go to `sink` straight from ONNX Runtime's output.
            let ok = self.graph.run_with(&feeds, &self.output, |s, y| {
                if s != want {
                    return Err(shape_str(s));
                }
                for i in 0..n {
                    sink(r0 + i, &y[i * img..(i + 1) * img]);
                }
                Ok(())
            })?;
            calls += 1;
            if let Err(found) = ok {
                return Err(EngineError::tensor(
                    &self.graph.file,
                    &self.output,
                    shape_str(&want),
                    found,
                ));
            }
            r0 = r1;
        }
        Ok(calls)
    }
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

/// Where and how sessions are created.
struct SessionFactory {
    env: ort::environment::Environment,
    provider: ExecutionProvider,
    intra_threads: usize,
    device_id: i32,
    fp16: bool,
    cache_dir: Option<PathBuf>,
}

impl SessionFactory {
    fn eps(&self, trt_profile: Option<&TrtProfile>) -> Vec<ep::ExecutionProviderDispatch> {
        match self.provider {
            ExecutionProvider::Cpu | ExecutionProvider::Auto => Vec::new(),
            ExecutionProvider::Cuda => vec![
                ep::CUDA::default()
                    .with_device_id(self.device_id)
                    .build()
                    .error_on_failure(),
            ],
            ExecutionProvider::TensorRt => {
                let mut trt = ep::TensorRT::default()
                    .with_device_id(self.device_id)
                    .with_fp16(self.fp16)
                    .with_engine_cache(true)
                    .with_timing_cache(true);
                if let Some(dir) = &self.cache_dir {
                    let d = dir.display().to_string();
                    trt = trt
                        .with_engine_cache_path(d.clone())
                        .with_timing_cache_path(d);
                }
                if let Some(p) = trt_profile
                    && !p.min.is_empty()
                {
                    trt = trt
                        .with_profile_min_shapes(p.min.clone())
                        .with_profile_opt_shapes(p.opt.clone())
                        .with_profile_max_shapes(p.max.clone());
                }
                vec![
                    trt.build().error_on_failure(),
                    // Nodes TensorRT does not take run on CUDA, not on the CPU.
                    ep::CUDA::default()
                        .with_device_id(self.device_id)
                        .build()
                        .error_on_failure(),
                ]
            }
        }
    }

    fn open(&self, file: &Path, trt_profile: Option<&TrtProfile>) -> Result<Graph, EngineError> {
        let build =
            |eps: Vec<ep::ExecutionProviderDispatch>| -> Result<Session, (bool, ort::Error)> {
                let mut b = Session::builder(&self.env)
                    .map_err(|e| (false, e))?
                    .with_optimization_level(GraphOptimizationLevel::Level3)
                    .map_err(|e| (false, e.into()))?;
                if self.intra_threads > 0 {
                    b = b
                        .with_intra_threads(self.intra_threads)
                        .map_err(|e| (false, e.into()))?;
                }
                // Idle ONNX Runtime threads sleep instead of spinning: the engine shares
                // the CPU with the rest of the pipeline (decoding, conversion).
                b = b
                    .with_intra_op_spinning(false)
                    .map_err(|e| (false, e.into()))?;
                if !eps.is_empty() {
                    b = b
                        .with_execution_providers(eps)
                        .map_err(|e| (true, e.into()))?;
                }
                b.commit_from_file(file).map_err(|e| (false, e))
            };
        match build(self.eps(trt_profile)) {
            Ok(s) => Graph::new(file.to_path_buf(), s),
            Err((true, e)) => Err(provider_error(self.provider, e.to_string())),
            Err((false, e))
                if self.provider == ExecutionProvider::Cpu
                    || self.provider == ExecutionProvider::Auto =>
            {
                Err(EngineError::invalid(
                    file,
                    format!("cannot load the ONNX graph: {e}"),
                ))
            }
            Err((false, e)) => {
                // The file loads on the CPU: the provider is at fault.
                match build(Vec::new()) {
                    Ok(_) => Err(provider_error(self.provider, e.to_string())),
                    Err((_, cpu_e)) => Err(EngineError::invalid(
                        file,
                        format!("cannot load the ONNX graph: {cpu_e}"),
                    )),
                }
            }
        }
    }
}

fn provider_error(p: ExecutionProvider, reason: String) -> EngineError {
    let fix = match p {
        ExecutionProvider::TensorRt => {
            "use an ONNX Runtime build with TensorRT (the onnxruntime-gpu wheel's libonnxruntime.so via \
             ORT_DYLIB_PATH, with TensorRT 10, CUDA 12 and cuDNN 9 libraries on the library path), or \
             execution-provider=cuda / cpu / auto"
        }
        ExecutionProvider::Cuda => {
            "use an ONNX Runtime build with CUDA (the onnxruntime-gpu wheel's libonnxruntime.so via \
             ORT_DYLIB_PATH, with CUDA 12 and cuDNN 9 libraries on the library path and a GPU), or \
             execution-provider=cpu / auto"
        }
        _ => "use execution-provider=cpu",
    };
    EngineError::Provider {
        provider: p,
        reason,
        fix: fix.to_string(),
    }
}

/// TensorRT optimisation profile shapes (`name:dims,name:dims`).
#[derive(Clone, Debug, Default)]
pub struct TrtProfile {
    pub min: String,
    pub opt: String,
    pub max: String,
}

fn trt_dims(name: &str, dims: &[usize]) -> String {
    let d: Vec<String> = dims.iter().map(|x| x.to_string()).collect();
    format!("{name}:{}", d.join("x"))
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
        let env = super::runtime::environment()?;
        let available = super::runtime::available_providers()?;
        let has = |n: &str| available.iter().any(|p| p == n);
        let candidates: Vec<ExecutionProvider> = match opts.execution_provider {
            ExecutionProvider::Auto => {
                let mut c = Vec::new();
                if has("TensorrtExecutionProvider") {
                    c.push(ExecutionProvider::TensorRt);
                }
                if has("CUDAExecutionProvider") {
                    c.push(ExecutionProvider::Cuda);
                }
                c.push(ExecutionProvider::Cpu);
                c
            }
            ExecutionProvider::TensorRt if !has("TensorrtExecutionProvider") => {
                return Err(provider_error(
                    ExecutionProvider::TensorRt,
                    format!(
                        "the ONNX Runtime library {} was built without it (it offers {available:?})",
                        super::runtime::library_path().display()
                    ),
                ));
            }
            ExecutionProvider::Cuda if !has("CUDAExecutionProvider") => {
                return Err(provider_error(
                    ExecutionProvider::Cuda,
                    format!(
                        "the ONNX Runtime library {} was built without it (it offers {available:?})",
                        super::runtime::library_path().display()
                    ),
                ));
            }
            p => vec![p],
        };
        let mut last_err = None;
        for provider in candidates {
            let cache_dir = if provider == ExecutionProvider::TensorRt {
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
        // Profiles name the inputs the graph declares with a dynamic dimension, at the
        // graph's rank (a scalar timestep is left out); read from the file, since the
        // session does not exist yet.
        type Part<'a> = (&'a str, Vec<usize>, Vec<usize>, Vec<usize>);
        let profile = |file: &Path, parts: &[Part<'_>]| -> Result<TrtProfile, EngineError> {
            if !trt {
                return Ok(TrtProfile::default());
            }
            let declared = super::onnx_proto::graph_inputs(file).map_err(|e| {
                EngineError::invalid(file, format!("cannot read the graph inputs: {e}"))
            })?;
            let kept: Vec<&Part<'_>> = parts
                .iter()
                .filter(|p| {
                    declared
                        .iter()
                        .any(|d| d.name == p.0 && d.is_dynamic() && d.dims.len() == p.1.len())
                })
                .collect();
            let join = |f: &dyn Fn(&Part<'_>) -> String| {
                kept.iter().map(|p| f(p)).collect::<Vec<_>>().join(",")
            };
            Ok(TrtProfile {
                min: join(&|p| trt_dims(p.0, &p.1)),
                opt: join(&|p| trt_dims(p.0, &p.2)),
                max: join(&|p| trt_dims(p.0, &p.3)),
            })
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
        let unet_profile = profile(
            &files[1],
            &[
                (
                    "sample",
                    vec![1, 4, lh, lw],
                    vec![typ, 4, lh, lw],
                    vec![max, 4, lh, lw],
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
        sdxl::check_unet(&mut unet, &text, pooled)?;
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
                    vec![1, 3, h, w],
                    vec![bs, 3, h, w],
                    vec![bs, 3, h, w],
                ),
                (
                    "images",
                    vec![1, 3, h, w],
                    vec![bs, 3, h, w],
                    vec![bs, 3, h, w],
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
                    vec![1, 4, lh, lw],
                    vec![bs, 4, lh, lw],
                    vec![bs, 4, lh, lw],
                ),
                (
                    "latent",
                    vec![1, 4, lh, lw],
                    vec![bs, 4, lh, lw],
                    vec![bs, 4, lh, lw],
                ),
            ],
        )?;
        let vae_decoder =
            VaeDecoder::bind(factory.open(&files[3], trt.then_some(&dec_profile))?, opts)?;
        Ok((text, unet, vae_encoder, vae_decoder, emb, shape))
    }
}

/// FNV-1a: a hash that stays the same across builds, for cache keys.
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// `<engine_cache_dir>/<key>`: the key hashes the graph files (size, mtime), the image
/// size, the batch sizes and the precision, so a changed model or setting never picks a
/// stale engine.
fn trt_cache_dir(
    opts: &LoadOptions,
    files: &[PathBuf; 4],
    unet_rows: (usize, usize),
) -> Result<PathBuf, EngineError> {
    let base = match &opts.engine_cache_dir {
        Some(d) => d.clone(),
        None => std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir)
            .join("i2i")
            .join("tensorrt"),
    };
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    for f in files {
        f.hash(&mut h);
        for extra in [f.clone(), f.with_extension("onnx_data")] {
            if let Ok(m) = std::fs::metadata(&extra) {
                m.len().hash(&mut h);
                if let Ok(t) = m.modified()
                    && let Ok(d) = t.duration_since(std::time::UNIX_EPOCH)
                {
                    d.as_nanos().hash(&mut h);
                }
            }
        }
    }
    (
        opts.width,
        opts.height,
        opts.batch_size,
        unet_rows,
        opts.fp16,
    )
        .hash(&mut h);
    let name = format!(
        "{}-{}x{}-b{}-r{}-{}-{:016x}",
        opts.model_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("model"),
        opts.width,
        opts.height,
        opts.batch_size,
        unet_rows.1,
        if opts.fp16 { "fp16" } else { "fp32" },
        h.finish()
    );
    let dir = base.join(name);
    std::fs::create_dir_all(&dir).map_err(|e| {
        EngineError::invalid(
            &dir,
            format!("cannot create the TensorRT engine cache directory: {e}"),
        )
    })?;
    let has_engine = std::fs::read_dir(&dir)
        .map(|r| {
            r.flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "engine"))
        })
        .unwrap_or(false);
    if !has_engine {
        log(
            LogLevel::Info,
            &format!(
                "TensorRT: no cached engine in {}; the first build takes minutes (it is cached for next time)",
                dir.display()
            ),
        );
    }
    Ok(dir)
}

/// Rows `rows` of `src` (`row` values each) as one graph input of `batch` rows: borrowed as
/// they are when they fill the batch, else copied into `buf` and padded by repeating the
/// last row (graphs exported with a fixed batch size).
fn rows_padded<'a>(
    src: &'a [f32],
    row: usize,
    rows: std::ops::Range<usize>,
    batch: usize,
    buf: &'a mut Vec<f32>,
) -> &'a [f32] {
    let (r0, r1) = (rows.start, rows.end);
    if r1 - r0 == batch {
        return &src[r0 * row..r1 * row];
    }
    buf.clear();
    buf.extend_from_slice(&src[r0 * row..r1 * row]);
    for _ in r1 - r0..batch {
        buf.extend_from_slice(&src[(r1 - 1) * row..r1 * row]);
    }
    buf
}
