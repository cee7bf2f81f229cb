// SPDX-License-Identifier: MPL-2.0
//! An image-to-depth ONNX model (a Depth-Anything or MiDaS / DPT export) for the `depth`
//! ControlNet preprocessor: packed RGB8 in, a greyscale depth picture (near = bright, as
//! those models' relative depth / disparity) out, at the same size.
//!
//! The graph must take one float image `[1, 3, H, W]` and give one float map `[1, H', W']`
//! or `[1, 1, H', W']`. The input is resized (image's triangle filter) to the graph's fixed
//! size, or to the frame size rounded down to a multiple of 14 (Depth-Anything's patch) when
//! the graph's size is dynamic, and normalised with the ImageNet mean and deviation, as the
//! Hugging Face image processors of both families do. The map is scaled to 0..255 by its
//! own minimum and maximum and resized back to the frame size.

use std::path::{Path, PathBuf};

use imageproc::image::{GrayImage, RgbImage, imageops};

use i2i_core::infer::ExecutionProvider;

use crate::runtime::error::EngineError;
use crate::runtime::graph::{Feed, Graph};
use crate::runtime::provider::{SessionFactory, candidates};

const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];
const PATCH: u32 = 14;

pub struct DepthModel {
    graph: Graph,
    input: String,
    output: String,
    /// The graph's input size, `(width, height)`; None for dynamic dimensions.
    fixed: (Option<u32>, Option<u32>),
    buf: Vec<f32>,
    out: Vec<f32>,
}

impl std::fmt::Debug for DepthModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DepthModel")
            .field("file", &self.graph.file)
            .finish()
    }
}

const EXPECTED_IN: &str = "one float image input [1, 3, H, W] (an image-to-depth graph)";
const EXPECTED_OUT: &str = "a float depth output [1, H, W] or [1, 1, H, W]";

impl DepthModel {
    /// Loads `file` on `provider` (TensorRT runs it on CUDA: no engine cache for it).
    pub fn load(
        file: &Path,
        provider: ExecutionProvider,
        device_id: i32,
        intra_threads: usize,
        cpu_arena: bool,
    ) -> Result<DepthModel, EngineError> {
        if !file.is_file() {
            return Err(EngineError::missing(file, "depth model (ONNX file)"));
        }
        let provider = match provider {
            ExecutionProvider::TensorRt => ExecutionProvider::Cuda,
            p => p,
        };
        let env = crate::runtime::environment()?;
        let mut last = None;
        for p in candidates(provider)? {
            if p == ExecutionProvider::TensorRt {
                continue;
            }
            let factory = SessionFactory {
                env: env.clone(),
                provider: p,
                intra_threads,
                device_id,
                fp16: false,
                cache_dir: None,
                cpu_arena,
            };
            match factory.open(file, None) {
                Ok(g) => return Self::bind(g),
                Err(e @ EngineError::Provider { .. }) if provider == ExecutionProvider::Auto => {
                    last = Some(e)
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| EngineError::missing(file, "an execution provider")))
    }

    fn bind(graph: Graph) -> Result<DepthModel, EngineError> {
        let file: PathBuf = graph.file.clone();
        let [input] = graph.inputs.as_slice() else {
            let found: Vec<String> = graph.inputs.iter().map(|s| s.to_string()).collect();
            return Err(EngineError::tensor(
                &file,
                "inputs",
                EXPECTED_IN,
                format!("{} inputs {found:?}", found.len()),
            ));
        };
        let ok_in = input.rank() == 4
            && input.elem.is_float()
            && input.dim(0).is_none_or(|b| b == 1)
            && input.dim(1).is_none_or(|c| c == 3);
        if !ok_in {
            return Err(EngineError::tensor(
                &file,
                &input.name,
                EXPECTED_IN,
                input.to_string(),
            ));
        }
        let Some(output) = graph.outputs.first() else {
            return Err(EngineError::tensor(&file, "outputs", EXPECTED_OUT, "none"));
        };
        let ok_out = output.elem.is_float()
            && match output.rank() {
                3 => output.dim(0).is_none_or(|b| b == 1),
                4 => output.dim(0).is_none_or(|b| b == 1) && output.dim(1).is_none_or(|c| c == 1),
                _ => false,
            };
        if !ok_out {
            return Err(EngineError::tensor(
                &file,
                &output.name,
                EXPECTED_OUT,
                output.to_string(),
            ));
        }
        Ok(DepthModel {
            input: input.name.clone(),
            output: output.name.clone(),
            fixed: (
                input.dim(3).map(|v| v as u32),
                input.dim(2).map(|v| v as u32),
            ),
            graph,
            buf: Vec::new(),
            out: Vec::new(),
        })
    }

    pub fn file(&self) -> &Path {
        &self.graph.file
    }

    /// The depth picture of packed RGB8 `width x height`, as packed RGB8 of the same size.
    pub fn run(&mut self, rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>, EngineError> {
        let file = self.graph.file.clone();
        let img = RgbImage::from_raw(width, height, rgb.to_vec()).ok_or_else(|| {
            EngineError::argument(
                "depth preprocessor input",
                format!("{width}x{height} packed RGB8"),
                format!("{} bytes", rgb.len()),
            )
        })?;
        let round = |v: u32| (v / PATCH * PATCH).max(PATCH);
        let (iw, ih) = (
            self.fixed.0.unwrap_or(round(width)),
            self.fixed.1.unwrap_or(round(height)),
        );
        let resized = if (iw, ih) == (width, height) {
            img
        } else {
            imageops::resize(&img, iw, ih, imageops::FilterType::Triangle)
        };
        let plane = (iw * ih) as usize;
        self.buf.clear();
        self.buf.resize(3 * plane, 0.0);
        for (i, px) in resized.pixels().enumerate() {
            for c in 0..3 {
                self.buf[c * plane + i] = (px.0[c] as f32 / 255.0 - MEAN[c]) / STD[c];
            }
        }
        let shape = [1, 3, ih as i64, iw as i64];
        let out_shape = self.graph.run(
            &[(self.input.as_str(), &shape[..], Feed::F32(&self.buf))],
            &self.output.clone(),
            &mut self.out,
        )?;
        let n = out_shape.len();
        if n < 3 {
            return Err(EngineError::tensor(
                &file,
                &self.output,
                EXPECTED_OUT,
                format!("{out_shape:?}"),
            ));
        }
        let (oh, ow) = (out_shape[n - 2] as u32, out_shape[n - 1] as u32);
        if (oh * ow) as usize != self.out.len() {
            return Err(EngineError::tensor(
                &file,
                &self.output,
                EXPECTED_OUT,
                format!("{out_shape:?}"),
            ));
        }
        let (lo, hi) = self
            .out
            .iter()
            .filter(|v| v.is_finite())
            .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let span = if hi > lo { hi - lo } else { 1.0 };
        let grey: Vec<u8> = self
            .out
            .iter()
            .map(|&v| {
                let v = if v.is_finite() { v } else { lo };
                ((v - lo) / span * 255.0).round().clamp(0.0, 255.0) as u8
            })
            .collect();
        let map = GrayImage::from_raw(ow, oh, grey).expect("size checked above");
        let map = if (ow, oh) == (width, height) {
            map
        } else {
            imageops::resize(&map, width, height, imageops::FilterType::Triangle)
        };
        Ok(map.as_raw().iter().flat_map(|&v| [v, v, v]).collect())
    }
}
