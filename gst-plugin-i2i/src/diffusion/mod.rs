// SPDX-License-Identifier: MPL-2.0
//! StreamDiffusion-style img2img on ONNX Runtime, free of GStreamer.
//!
//! The element feeds RGB8 frames at the model size and gets back decoded frames in the
//! same order. Each frame's trajectory through the `n` denoising steps depends only on
//! that frame, the fixed per-seed noise and the text embeddings, so the stream batch is
//! a pipeline: a frame entering at call `c` comes out at call `c + n - 1`, and the
//! result does not depend on how many frames share a model call (`batch_size`).
//!
//! Output is held until the pipeline is warm (no junk frames); [`Engine::drain`] runs the
//! remaining steps for the frames still in flight, so every input frame comes out.

use std::path::PathBuf;

/// How the negative (unconditional) side of classifier-free guidance is formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CfgType {
    /// No guidance: `eps = eps_cond`.
    None,
    /// Full CFG: the UNet also runs on the negative prompt (2n evaluations).
    Full,
    /// Residual CFG with the stock noise as the negative (n evaluations).
    #[default]
    SelfNegative,
    /// Residual CFG initialised once per frame from the negative prompt (n + 1 evaluations).
    Initialize,
}

/// Which ONNX Runtime execution provider runs the graphs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ExecutionProvider {
    /// TensorRT, else CUDA, else CPU; the one chosen is logged and reported.
    #[default]
    Auto,
    Cpu,
    Cuda,
    TensorRt,
}

/// Fixed at load time: changing any of these needs a new [`Engine`].
#[derive(Clone, Debug, PartialEq)]
pub struct LoadOptions {
    /// Directory in the diffusers / optimum ONNX layout.
    pub model_dir: PathBuf,
    /// Image size the model runs at (multiples of 8).
    pub width: u32,
    pub height: u32,
    /// Frames per model call.
    pub batch_size: usize,
    pub execution_provider: ExecutionProvider,
    pub device_id: i32,
    /// Run in half precision where the provider supports it (TensorRT / CUDA).
    pub fp16: bool,
    /// Where TensorRT keeps engines and timing caches.
    pub engine_cache_dir: Option<PathBuf>,
    /// ONNX Runtime intra-op threads; 0 lets ONNX Runtime decide.
    pub intra_threads: usize,
}

/// Settings that may change while the stream runs; applied by [`Engine::set_params`]
/// before the next call.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamParams {
    pub prompt: String,
    pub negative_prompt: String,
    pub seed: u64,
    /// Indices into the LCM timestep list; `n = t_index_list.len()` denoising steps.
    pub t_index_list: Vec<u32>,
    pub num_inference_steps: u32,
    pub guidance_scale: f32,
    pub delta: f32,
    pub cfg_type: CfgType,
    pub add_noise: bool,
    /// Stochastic similarity filter threshold (eta); 0 turns the filter off.
    pub similarity_threshold: f32,
    pub max_skip_frames: u32,
}

impl Default for StreamParams {
    fn default() -> Self {
        StreamParams {
            prompt: String::new(),
            negative_prompt: String::new(),
            seed: 2,
            t_index_list: vec![32, 45],
            num_inference_steps: 50,
            guidance_scale: 1.2,
            delta: 1.0,
            cfg_type: CfgType::SelfNegative,
            add_noise: true,
            similarity_threshold: 0.0,
            max_skip_frames: 10,
        }
    }
}

/// One frame in: packed RGB8, `width * height * 3` bytes at the model size.
/// `tag` is the caller's, returned with the frame's output.
#[derive(Clone, Debug)]
pub struct InputFrame {
    pub tag: u64,
    pub rgb: Vec<u8>,
}

/// One frame out, in input order.
#[derive(Clone, Debug)]
pub struct OutputFrame {
    pub tag: u64,
    /// Planar float RGB `[3, height, width]` in `[0, 1]`: the decoder's output as
    /// `clamp(y / 2 + 0.5, 0, 1)`.
    pub pixels: std::sync::Arc<Vec<f32>>,
    /// True when the similarity filter skipped this frame and `pixels` repeat the
    /// previous output.
    pub skipped: bool,
}
