// SPDX-License-Identifier: MPL-2.0
//! SDXL conditioning (sdxl-turbo, SDXL + LCM-LoRA, with the SDXL VAE or TAESDXL), as
//! diffusers' `StableDiffusionXLPipeline` computes it:
//!
//! * `encoder_hidden_states` `[B, 77, E1 + E2]`: the penultimate hidden states of both text
//!   encoders (CLIP ViT-L, E1 = 768, and OpenCLIP bigG, E2 = 1280) concatenated;
//! * `text_embeds` `[B, P]`: the projected pooled output of the second encoder (P = 1280);
//! * `time_ids` `[B, 6]`: original height, width, crop top, crop left, target height, width
//!   (here the frame size, no crop);
//! * the negative rows are zeros when `model_index.json` says `force_zeros_for_empty_prompt`
//!   (its default, and the ONNX Runtime demo's) and the negative prompt is empty.
//!
//! Both export layouts are bound by name: optimum's (`hidden_states.0` .. `hidden_states.N`,
//! `text_embeds`, `out_sample`) and ONNX Runtime's Stable Diffusion demo (`hidden_states` =
//! the penultimate layer, `text_embeddings`, UNet output `latent`, timestep `[1]`).
//!
//! One prompt's conditioning travels through the engine as one [`super::Embedding`]
//! `[1, L + k, E1 + E2]`: the L hidden-state rows, then the pooled vector in the next
//! `k = ceil(P / (E1 + E2))` rows, zero-padded (`k = 1` for SDXL). The stream batch, prompt
//! blends and transitions then handle SDXL exactly as SD 1.5 (the pooled vector blends with
//! the hidden states, as in diffusers), and [`UnetXl`] splits the rows again at the UNet.

use std::path::Path;

use serde_json::Value;

use std::path::PathBuf;

use super::tokenizer::ClipTokenizer;
use super::{EngineError, LoadOptions};
use crate::runtime::graph::shape_str;
use crate::runtime::graph::{Feed, Graph, Spec};

/// Length of `time_ids` (original size, crop corner, target size).
pub const TIME_IDS: usize = 6;
/// The SDXL VAE's scaling factor: used when the VAE has no config.json (the ONNX Runtime
/// demo writes none).
pub const SDXL_SCALING_FACTOR: f32 = 0.13025;

/// The files SDXL adds to the layout.
#[derive(Clone, Debug)]
pub struct XlFiles {
    pub text_encoder_2: PathBuf,
    pub tokenizer_2: ClipTokenizer,
    pub force_zeros: bool,
}

/// Checks, before any session exists, that the UNet and the text encoders are of one family:
/// an SDXL UNet (`text_embeds`) needs `text_encoder_2/` and `tokenizer_2/`, an SD 1.x / 2.x
/// UNet must not come with them. Returns SDXL's extra files.
pub fn check_family(dir: &Path, unet_file: &Path) -> Result<Option<XlFiles>, EngineError> {
    let te2 = dir.join("text_encoder_2");
    let xl = unet_is_xl(unet_file).unwrap_or(te2.is_dir());
    match (xl, te2.is_dir()) {
        (false, false) => Ok(None),
        (true, false) => Err(EngineError::tensor(
            unet_file,
            "text_embeds",
            "text_encoder_2/ and tokenizer_2/ beside text_encoder/ (a UNet that takes \
             'text_embeds' is SDXL, which is conditioned on two text encoders)",
            format!(
                "one text encoder: {} is missing (the model directory mixes model families)",
                te2.display()
            ),
        )),
        (false, true) => Err(EngineError::tensor(
            unet_file,
            "text_embeds",
            "an SDXL UNet with the inputs 'text_embeds' and 'time_ids' (the directory has \
             text_encoder_2/)",
            "a UNet without 'text_embeds' (SD 1.x / 2.x: the model directory mixes model families)",
        )),
        (true, true) => {
            let file = te2.join("model.onnx");
            if !file.is_file() {
                return Err(EngineError::missing(&file, "ONNX graph"));
            }
            Ok(Some(XlFiles {
                text_encoder_2: file,
                tokenizer_2: ClipTokenizer::from_dir(&dir.join("tokenizer_2"))?,
                force_zeros: force_zeros_for_empty_prompt(dir)?,
            }))
        }
    }
}

/// Whether the UNet graph takes `text_embeds` (an SDXL UNet), read from the file before
/// any session exists; `None` when the file cannot be read (ONNX Runtime then reports why
/// when it loads it).
pub fn unet_is_xl(unet_file: &Path) -> Option<bool> {
    let inputs = crate::runtime::onnx_proto::graph_inputs(unet_file).ok()?;
    Some(inputs.iter().any(|i| i.name == "text_embeds"))
}

/// `force_zeros_for_empty_prompt` of `model_index.json`; true when absent (diffusers'
/// default; the ONNX Runtime demo writes no model_index.json and zeros the negative too).
pub fn force_zeros_for_empty_prompt(dir: &Path) -> Result<bool, EngineError> {
    let path = dir.join("model_index.json");
    if !path.is_file() {
        return Ok(true);
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| EngineError::invalid(&path, format!("cannot read: {e}")))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| EngineError::invalid(&path, format!("invalid JSON: {e}")))?;
    match v.get("force_zeros_for_empty_prompt") {
        None | Some(Value::Null) => Ok(true),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(EngineError::config(
            &path,
            "force_zeros_for_empty_prompt",
            "true or false",
            other.to_string(),
        )),
    }
}

/// Rows of width `e` that hold a pooled vector of `p` values.
pub fn pooled_rows(p: usize, e: usize) -> usize {
    p.div_ceil(e.max(1))
}

/// One of the two text encoders with its tokenizer and the outputs SDXL uses.
#[derive(Debug)]
struct Encoder {
    graph: Graph,
    tokenizer: ClipTokenizer,
    ids_name: String,
    seq_len: usize,
    /// The penultimate layer's hidden states `[B, L, E]`.
    hidden: String,
    /// The projected pooled output `[B, P]` (second encoder only).
    pooled: Option<String>,
    ids: Vec<i64>,
}

impl Encoder {
    fn bind(graph: Graph, tokenizer: ClipTokenizer, second: bool) -> Result<Self, EngineError> {
        let ids = graph.require_input("input_ids", "token ids [batch, 77]")?;
        graph.no_other_inputs(&["input_ids"])?;
        let seq_len = tokenizer.max_length();
        if ids.elem.is_float() || ids.rank() != 2 || ids.dim(1).is_some_and(|l| l != seq_len) {
            return Err(EngineError::tensor(
                &graph.file,
                "input_ids",
                format!("int64 or int32 [batch, {seq_len}]"),
                ids.to_string(),
            ));
        }
        let names: Vec<&str> = graph.outputs.iter().map(|s| s.name.as_str()).collect();
        // ORT demo: `hidden_states` is the penultimate layer already; optimum: every layer.
        let hidden = if graph.output("hidden_states").is_some() {
            "hidden_states".to_string()
        } else {
            let top = graph
                .outputs
                .iter()
                .filter_map(|s| s.name.strip_prefix("hidden_states.")?.parse::<usize>().ok())
                .max();
            match top {
                Some(k) if k >= 1 => format!("hidden_states.{}", k - 1),
                _ => {
                    return Err(EngineError::tensor(
                        &graph.file,
                        "hidden_states",
                        "the hidden states of every layer (hidden_states.0 .. hidden_states.N, \
                         optimum's SDXL export) or of the penultimate one (hidden_states, ONNX \
                         Runtime's demo): SDXL conditions on the penultimate layer",
                        format!("outputs {names:?}"),
                    ));
                }
            }
        };
        let spec = graph.output(&hidden).cloned();
        if let Some(s) = &spec
            && (s.rank() != 3 || !s.elem.is_float())
        {
            return Err(EngineError::tensor(
                &graph.file,
                &hidden,
                "float [batch, 77, E]",
                s.to_string(),
            ));
        }
        let pooled = if second {
            let p = ["text_embeds", "text_embeddings"]
                .into_iter()
                .find_map(|n| graph.output(n).filter(|s| s.rank() == 2).cloned());
            match p {
                Some(s) if s.elem.is_float() => Some(s.name),
                _ => {
                    return Err(EngineError::tensor(
                        &graph.file,
                        "text_embeds",
                        "the projected pooled output 'text_embeds' [batch, P] (optimum) or \
                         'text_embeddings' [batch, P] (ONNX Runtime's demo) of \
                         CLIPTextModelWithProjection",
                        format!("outputs {names:?}"),
                    ));
                }
            }
        } else {
            None
        };
        Ok(Encoder {
            graph,
            tokenizer,
            ids_name: ids.name,
            seq_len,
            hidden,
            pooled,
            ids: Vec::new(),
        })
    }

    /// Runs output `name` on `text`'s ids; returns its shape.
    fn run(&mut self, text: &str, name: &str, out: &mut Vec<f32>) -> Result<Vec<i64>, EngineError> {
        let ids = self.tokenizer.encode(text);
        self.ids.clear();
        self.ids.extend(ids.iter().map(|&i| i64::from(i)));
        let shape = [1i64, self.seq_len as i64];
        let feeds = [(self.ids_name.as_str(), &shape[..], Feed::I64(&self.ids))];
        self.graph.run(&feeds, name, out)
    }

    /// Hidden states `[L, E]` of `text`; returns E.
    fn hidden(&mut self, text: &str, out: &mut Vec<f32>) -> Result<usize, EngineError> {
        let name = self.hidden.clone();
        let s = self.run(text, &name, out)?;
        if s.len() != 3 || s[0] != 1 || s[1] != self.seq_len as i64 || s[2] <= 0 {
            return Err(EngineError::tensor(
                &self.graph.file,
                &name,
                format!("[1, {}, E]", self.seq_len),
                shape_str(&s),
            ));
        }
        Ok(s[2] as usize)
    }
}

/// The two text encoders of an SDXL model.
#[derive(Debug)]
pub struct XlText {
    enc1: Encoder,
    enc2: Encoder,
    force_zeros: bool,
    h1: Vec<f32>,
    h2: Vec<f32>,
    pooled: Vec<f32>,
}

impl XlText {
    pub fn bind(
        (g1, t1): (Graph, ClipTokenizer),
        (g2, t2): (Graph, ClipTokenizer),
        force_zeros: bool,
    ) -> Result<Self, EngineError> {
        let enc1 = Encoder::bind(g1, t1, false)?;
        let enc2 = Encoder::bind(g2, t2, true)?;
        if enc1.seq_len != enc2.seq_len {
            return Err(EngineError::tensor(
                &enc2.graph.file,
                "input_ids",
                format!("sequence length {} (as tokenizer/)", enc1.seq_len),
                format!("{} (tokenizer_2/ model_max_length)", enc2.seq_len),
            ));
        }
        Ok(XlText {
            enc1,
            enc2,
            force_zeros,
            h1: Vec::new(),
            h2: Vec::new(),
            pooled: Vec::new(),
        })
    }

    /// The graph files, for messages.
    pub fn files(&self) -> [&Path; 2] {
        [&self.enc1.graph.file, &self.enc2.graph.file]
    }

    /// Size of the pooled vector (`text_embeds`) of the last encoded prompt.
    pub fn pooled_size(&self) -> usize {
        self.pooled.len()
    }

    /// The packed conditioning of `text` (see the module header): `[1, L + k, E1 + E2]`.
    pub fn encode(&mut self, text: &str, out: &mut Vec<f32>) -> Result<[usize; 3], EngineError> {
        let e1 = self.enc1.hidden(text, &mut self.h1)?;
        let e2 = self.enc2.hidden(text, &mut self.h2)?;
        let name = self.enc2.pooled.clone().unwrap_or_default();
        let s = self.enc2.run(text, &name, &mut self.pooled)?;
        if s.len() != 2 || s[0] != 1 || s[1] <= 0 {
            return Err(EngineError::tensor(
                &self.enc2.graph.file,
                &name,
                "[1, P]",
                shape_str(&s),
            ));
        }
        let l = self.enc1.seq_len;
        let e = e1 + e2;
        let k = pooled_rows(self.pooled.len(), e);
        out.clear();
        out.reserve((l + k) * e);
        for r in 0..l {
            out.extend_from_slice(&self.h1[r * e1..(r + 1) * e1]);
            out.extend_from_slice(&self.h2[r * e2..(r + 1) * e2]);
        }
        out.extend_from_slice(&self.pooled);
        out.resize((l + k) * e, 0.0);
        Ok([1, l + k, e])
    }

    /// The negative conditioning: zeros for an empty negative prompt under
    /// `force_zeros_for_empty_prompt`, else as [`XlText::encode`].
    pub fn encode_negative(
        &mut self,
        text: &str,
        out: &mut Vec<f32>,
    ) -> Result<[usize; 3], EngineError> {
        let shape = self.encode(text, out)?;
        if self.force_zeros && text.is_empty() {
            out.fill(0.0);
        }
        Ok(shape)
    }
}

/// The extra UNet inputs of SDXL and the buffers that split packed rows into them.
#[derive(Debug)]
pub struct UnetXl {
    /// Declared size of `text_embeds`, if fixed.
    pub pooled_declared: Option<usize>,
    time_ids: [f32; TIME_IDS],
    hidden_buf: Vec<f32>,
    pooled_buf: Vec<f32>,
    time_buf: Vec<f32>,
}

/// Names of the UNet inputs SDXL adds.
pub const UNET_INPUTS: [&str; 2] = ["text_embeds", "time_ids"];

impl UnetXl {
    /// `None` for a UNet without `text_embeds`; checks both extra inputs.
    pub fn bind(graph: &Graph, opts: &LoadOptions) -> Result<Option<Self>, EngineError> {
        let Some(te) = graph.input("text_embeds").cloned() else {
            return Ok(None);
        };
        check_float_2d(graph, &te, "[batch, P] (pooled text embedding)")?;
        let tid = graph.require_input(
            "time_ids",
            "size conditioning [batch, 6] (an SDXL UNet takes it with 'text_embeds')",
        )?;
        check_float_2d(graph, &tid, "[batch, 6] (original size, crop, target size)")?;
        if let Some(n) = tid.dim(1)
            && n != TIME_IDS
        {
            return Err(EngineError::tensor(
                &graph.file,
                "time_ids",
                "[batch, 6] (original height, width, crop top, left, target height, width; \
                 the SDXL refiner's 5 values with an aesthetic score are not supported)",
                format!("{tid} ({n} values)"),
            ));
        }
        let (h, w) = (opts.height as f32, opts.width as f32);
        Ok(Some(UnetXl {
            pooled_declared: te.dim(1),
            time_ids: [h, w, 0.0, 0.0, h, w],
            hidden_buf: Vec::new(),
            pooled_buf: Vec::new(),
            time_buf: Vec::new(),
        }))
    }

    /// Splits `b` packed rows `[b, L + k, E]` (`seq = [L + k, E]`) into
    /// `encoder_hidden_states` `[b, L, E]`, `text_embeds` `[b, P]` and `time_ids` `[b, 6]`;
    /// returns L.
    pub fn split(&mut self, packed: &[f32], b: usize, seq: [usize; 2], p: usize) -> usize {
        let e = seq[1];
        let k = pooled_rows(p, e);
        let l = seq[0] - k;
        let row = seq[0] * e;
        self.hidden_buf.clear();
        self.pooled_buf.clear();
        self.time_buf.clear();
        for r in 0..b {
            let src = &packed[r * row..(r + 1) * row];
            self.hidden_buf.extend_from_slice(&src[..l * e]);
            self.pooled_buf.extend_from_slice(&src[l * e..l * e + p]);
            self.time_buf.extend_from_slice(&self.time_ids);
        }
        l
    }

    pub fn hidden(&self) -> &[f32] {
        &self.hidden_buf
    }

    pub fn pooled(&self) -> &[f32] {
        &self.pooled_buf
    }

    pub fn time_ids(&self) -> &[f32] {
        &self.time_buf
    }
}

fn check_float_2d(graph: &Graph, s: &Spec, expected: &str) -> Result<(), EngineError> {
    if s.rank() != 2 || !s.elem.is_float() {
        return Err(EngineError::tensor(
            &graph.file,
            &s.name,
            format!("float {expected}"),
            s.to_string(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_rows_round_up() {
        assert_eq!(pooled_rows(1280, 2048), 1);
        assert_eq!(pooled_rows(40, 56), 1);
        assert_eq!(pooled_rows(57, 56), 2);
    }

    #[test]
    fn force_zeros_defaults_to_true_and_reads_the_index() {
        let d = std::env::temp_dir().join(format!("i2i-sdxl-index-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        assert!(force_zeros_for_empty_prompt(&d).unwrap());
        std::fs::write(
            d.join("model_index.json"),
            r#"{"force_zeros_for_empty_prompt": false}"#,
        )
        .unwrap();
        assert!(!force_zeros_for_empty_prompt(&d).unwrap());
        std::fs::write(
            d.join("model_index.json"),
            r#"{"force_zeros_for_empty_prompt": 3}"#,
        )
        .unwrap();
        let e = force_zeros_for_empty_prompt(&d).unwrap_err().to_string();
        assert!(
            e.contains("force_zeros_for_empty_prompt") && e.contains("true or false"),
            "{e}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
