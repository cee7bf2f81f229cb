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
use std::time::Duration;

use i2i_core::settings;
use i2i_core::settings::blend::BlendMode;

mod conditioning;
mod engine;
pub mod ipadapter;
pub mod lora;
pub mod model;
pub mod noise;
pub mod scheduler;
pub mod sdxl;
pub mod stream;
pub mod tokenizer;
mod trt_cache;
pub mod weights;

pub use engine::{Engine, Preprocessor};
// The types of the engine's parameters and errors, defined with what they belong to.
pub use crate::runtime::error::EngineError;
pub use crate::runtime::provider::{DEFAULT_TRT_PROFILE, TrtSizeProfile};
pub use i2i_core::infer::ExecutionProvider;
pub use i2i_core::settings::CfgType;

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
    /// The image sizes one TensorRT engine covers; `width` x `height` must lie within.
    pub trt_profile: TrtSizeProfile,
    /// ONNX Runtime's CPU memory arena (`cpu-arena`): false frees each call's memory.
    pub cpu_arena: bool,
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
    /// Weighted prompt blend, in place of `prompt` while set (and not empty).
    pub prompt_blend: Option<Vec<(String, f64)>>,
    /// Weighted seed blend, in place of `seed` while set (and not empty).
    pub seed_blend: Option<Vec<(u64, f64)>>,
    /// How blends and prompt transitions combine.
    pub blend_mode: BlendMode,
    /// Frames over which a change of the conditioning or the noise fades in (0 = jump).
    pub transition_frames: u32,
    /// LoRA adapters bound to the UNet's LoRA inputs, `FILE[:SCALE][,FILE[:SCALE]...]`
    /// (see [`lora`]); empty = none.
    pub lora: String,
}

impl Default for StreamParams {
    fn default() -> Self {
        StreamParams {
            prompt: String::new(),
            negative_prompt: String::new(),
            seed: 2,
            t_index_list: settings::DEFAULT_T_INDEX_LIST.to_vec(),
            num_inference_steps: settings::DEFAULT_NUM_INFERENCE_STEPS,
            guidance_scale: 1.2,
            delta: 1.0,
            cfg_type: CfgType::SelfNegative,
            add_noise: true,
            similarity_threshold: 0.0,
            max_skip_frames: 10,
            prompt_blend: None,
            seed_blend: None,
            blend_mode: BlendMode::Linear,
            transition_frames: 0,
            lora: String::new(),
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

/// One frame preprocessed by a [`Preprocessor`] (on any thread), ready for
/// [`Engine::process_prepared`]: planar `[3, height, width]` floats `v / 255 * 2 - 1`.
/// Its buffer goes back to the preprocessor's pool when the frame is dropped: once the
/// engine has encoded it, and also when the element drops it unencoded (a late frame, a
/// flush), so a stream that drops frames allocates no new ones either.
pub struct PreparedFrame {
    pub tag: u64,
    /// `[1, 3, height, width]` in host memory, bound to the VAE encoder as it is; None
    /// only while it is dropped.
    image: Option<ort::value::Tensor<f32>>,
    /// ControlNet models: the control images `[num, 3, height, width]` in `[0, 1]`; the
    /// frame itself (`v / 255`) for each ControlNet unless replaced.
    pub(crate) control: Option<Vec<f32>>,
    /// Where the image goes back to.
    pool: engine::BufferPool,
}

impl Drop for PreparedFrame {
    fn drop(&mut self) {
        if let Some(image) = self.image.take() {
            self.pool.recycle(image);
        }
    }
}

impl PreparedFrame {
    pub(crate) fn new(
        tag: u64,
        image: ort::value::Tensor<f32>,
        control: Option<Vec<f32>>,
        pool: engine::BufferPool,
    ) -> PreparedFrame {
        PreparedFrame {
            tag,
            image: Some(image),
            control,
            pool,
        }
    }

    /// The `[1, 3, height, width]` host tensor.
    pub(crate) fn image(&self) -> &ort::value::Tensor<f32> {
        self.image.as_ref().expect("present until dropped")
    }

    pub(crate) fn data(&self) -> &[f32] {
        self.image().extract_tensor().1
    }

    /// Number of control images the frame carries (the model's ControlNets).
    pub fn controlnets(&self) -> usize {
        let plane = self.data().len();
        self.control.as_ref().map_or(0, |c| c.len() / plane.max(1))
    }

    /// Replaces the control image of ControlNet `index` with packed RGB8 at the model size
    /// (`v / 255`, planar). Refused (the frame keeps its image) for an index beyond the
    /// model's ControlNets or another size.
    pub fn set_control_rgb8(&mut self, index: usize, rgb: &[u8]) -> Result<(), EngineError> {
        let img = self.data().len();
        let num = self.controlnets();
        if index >= num {
            return Err(EngineError::argument(
                "ControlNet index",
                format!("below {num} (the model's ControlNets)"),
                index.to_string(),
            ));
        }
        if rgb.len() != img {
            return Err(EngineError::argument(
                "control image",
                format!("{} bytes of packed RGB8 at the model size", img),
                format!("{} bytes", rgb.len()),
            ));
        }
        let plane = img / 3;
        let dst = &mut self.control.as_mut().expect("num > 0")[index * img..(index + 1) * img];
        control_planes(rgb, plane, dst);
        Ok(())
    }
}

/// Packed RGB8 to planar `v / 255` (the control images' range, as diffusers' ControlNet
/// pipelines feed them).
pub(crate) fn control_planes(rgb: &[u8], plane: usize, dst: &mut [f32]) {
    for (i, px) in rgb.chunks_exact(3).enumerate().take(plane) {
        dst[i] = px[0] as f32 / 255.0;
        dst[plane + i] = px[1] as f32 / 255.0;
        dst[2 * plane + i] = px[2] as f32 / 255.0;
    }
}

impl std::fmt::Debug for PreparedFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedFrame")
            .field("tag", &self.tag)
            .field("values", &self.data().len())
            .finish()
    }
}

/// One frame out of [`Engine::process_prepared`], in input order, still in the decoder's
/// range `[-1, 1]`: turning it into pixels ([`DecodedFrame::to_rgb8`],
/// [`DecodedFrame::pixels`]) is left to the caller's thread, so the thread that runs the
/// model calls does not spend time on it.
#[derive(Clone)]
pub struct DecodedFrame {
    pub tag: u64,
    /// Raw decoder output `[1, 3, height, width]`: the tensor ONNX Runtime wrote it into.
    pub(crate) decoded: std::sync::Arc<ort::value::Tensor<f32>>,
    /// True when the similarity filter skipped this frame and `decoded` repeats the
    /// previous output.
    pub skipped: bool,
}

impl std::fmt::Debug for DecodedFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodedFrame")
            .field("tag", &self.tag)
            .field("skipped", &self.skipped)
            .finish()
    }
}

impl DecodedFrame {
    /// The raw decoder output, planar `[3, height, width]`, in about `[-1, 1]`.
    pub fn decoded(&self) -> &[f32] {
        self.decoded.extract_tensor().1
    }

    /// True when both frames hold the same decoder output (a skipped frame repeats it).
    pub fn same_output(&self, other: &DecodedFrame) -> bool {
        std::sync::Arc::ptr_eq(&self.decoded, &other.decoded)
    }

    /// Planar `[0, 1]` pixels `clamp(y / 2 + 0.5, 0, 1)` into `out` (resized to fit).
    pub fn pixels(&self, out: &mut Vec<f32>) {
        decoded_to_unit(self.decoded(), out);
    }

    /// Packed RGB8 at `width x height` in one pass: the same bits as [`to_rgb8`] of
    /// [`DecodedFrame::pixels`].
    pub fn to_rgb8(&self, width: u32, height: u32, out: &mut Vec<u8>) {
        decoded_to_rgb8(self.decoded(), width, height, out);
    }
}

/// Raw decoder output to planar `[0, 1]` pixels `clamp(y / 2 + 0.5, 0, 1)`.
pub fn decoded_to_unit(decoded: &[f32], out: &mut Vec<f32>) {
    out.clear();
    out.extend(decoded.iter().map(|&v| to_unit(v)));
}

/// Raw decoder output to packed RGB8 in one pass: the same bits as [`to_rgb8`] of
/// [`decoded_to_unit`].
pub fn decoded_to_rgb8(decoded: &[f32], width: u32, height: u32, out: &mut Vec<u8>) {
    planar_to_rgb8(decoded, width, height, out, to_unit);
}

/// `clamp(y / 2 + 0.5, 0, 1)`, with NaN mapped to 0 so no NaN reaches the pixels.
#[allow(clippy::manual_clamp)]
#[inline]
pub(crate) fn to_unit(v: f32) -> f32 {
    (v / 2.0 + 0.5).max(0.0).min(1.0)
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            model_dir: PathBuf::new(),
            width: 512,
            height: 512,
            batch_size: 1,
            execution_provider: ExecutionProvider::Auto,
            device_id: 0,
            fp16: true,
            engine_cache_dir: None,
            intra_threads: 0,
            trt_profile: TrtSizeProfile::default(),
            cpu_arena: true,
        }
    }
}

/// Text-encoder output for one prompt: `shape = [1, 77, E]`, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Embedding {
    pub shape: [usize; 3],
    pub data: Vec<f32>,
}

/// The fixed per-seed latent noise, `shape = [n, 4, h, w]` (one slot per denoising step).
#[derive(Clone, Debug, PartialEq)]
pub struct Noise {
    pub shape: [usize; 4],
    pub data: Vec<f32>,
}

/// Cumulative wall time per stage since the engine was loaded, and call counts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timings {
    /// RGB8 to normalised NCHW floats (and the similarity filter).
    pub preprocess: Duration,
    /// Tokenizer and text encoder.
    pub text: Duration,
    pub vae_encode: Duration,
    pub unet: Duration,
    pub vae_decode: Duration,
    /// Decoder output to `[0, 1]` planar pixels.
    pub postprocess: Duration,
    /// Frames given to [`Engine::process`].
    pub frames_in: u64,
    /// Frames returned (including re-emitted skipped frames).
    pub frames_out: u64,
    /// Frames the similarity filter skipped.
    pub frames_skipped: u64,
    pub text_calls: u64,
    pub vae_encode_calls: u64,
    pub unet_calls: u64,
    /// UNet batch rows evaluated in total (`unet_rows / unet_calls` is the mean batch).
    pub unet_rows: u64,
    pub vae_decode_calls: u64,
}

impl Timings {
    /// Sum of all stages.
    pub fn total(&self) -> Duration {
        self.preprocess
            + self.text
            + self.vae_encode
            + self.unet
            + self.vae_decode
            + self.postprocess
    }
}

/// Planar `[3, height, width]` floats in `[0, 1]` to packed RGB8, rounding to nearest.
/// `out` is resized to `width * height * 3`; values outside `[0, 1]` (or NaN) are clamped.
pub fn to_rgb8(pixels: &[f32], width: u32, height: u32, out: &mut Vec<u8>) {
    planar_to_rgb8(pixels, width, height, out, |v| v);
}

/// Planar floats through `map` (into `[0, 1]`) to packed RGB8, rounding to nearest.
#[inline]
fn planar_to_rgb8(
    pixels: &[f32],
    width: u32,
    height: u32,
    out: &mut Vec<u8>,
    map: impl Fn(f32) -> f32,
) {
    let plane = width as usize * height as usize;
    out.resize(plane * 3, 0);
    if pixels.len() < plane * 3 {
        out.fill(0);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        unsafe { pack_avx2(pixels, plane, out, map) };
        return;
    }
    pack(pixels, plane, out, map);
}

/// The packing loop; `#[inline(always)]` so that each caller compiles it for its own
/// target features. Plain float32 operations in the same order on every path, so every
/// path gives the same bits.
#[inline(always)]
fn pack(pixels: &[f32], plane: usize, out: &mut [u8], map: impl Fn(f32) -> f32) {
    let (r, rest) = pixels.split_at(plane);
    let (g, b) = rest.split_at(plane);
    let conv = |v: f32| -> u8 {
        // `as u8` saturates and maps NaN to 0.
        (map(v) * 255.0 + 0.5) as u8
    };
    for (((px, &r), &g), &b) in out.chunks_exact_mut(3).zip(r).zip(g).zip(&b[..plane]) {
        px[0] = conv(r);
        px[1] = conv(g);
        px[2] = conv(b);
    }
}

/// [`pack`] compiled for AVX2, where the compiler vectorises the conversion and the
/// stride-3 stores.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn pack_avx2(pixels: &[f32], plane: usize, out: &mut [u8], map: impl Fn(f32) -> f32) {
    pack(pixels, plane, out, map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rgb8_rounds_and_clamps() {
        let pixels = [0.0, 1.0, 0.5, -1.0, 2.0, f32::NAN];
        let mut out = Vec::new();
        to_rgb8(&pixels, 2, 1, &mut out);
        // planar R = [0, 1], G = [0.5, -1], B = [2, NaN]
        assert_eq!(out, vec![0, 128, 255, 255, 0, 0]);
    }

    #[test]
    fn rgb8_paths_agree_bit_for_bit() {
        let plane = 4099;
        let pixels: Vec<f32> = (0..3 * plane)
            .map(|i| match i % 97 {
                0 => f32::NAN,
                1 => f32::INFINITY,
                _ => ((i as f32) * 0.618).sin() * 1.7,
            })
            .collect();
        let mut a = vec![0u8; 3 * plane];
        let mut b = Vec::new();
        pack(&pixels, plane, &mut a, to_unit);
        planar_to_rgb8(&pixels, plane as u32, 1, &mut b, to_unit);
        assert_eq!(a, b);
    }

    #[test]
    fn decoded_rgb8_matches_the_two_step_path() {
        let decoded: Vec<f32> = (0..3 * 64)
            .map(|i| (i as f32 * 0.173).sin() * 1.3)
            .chain([f32::NAN, -5.0, 5.0])
            .collect();
        let (w, h) = (65u32, 1u32);
        let mut px = Vec::new();
        decoded_to_unit(&decoded, &mut px);
        assert_eq!(px[3 * 64], 0.0, "NaN maps to 0");
        let (mut a, mut b) = (Vec::new(), Vec::new());
        to_rgb8(&px, w, h, &mut a);
        decoded_to_rgb8(&decoded, w, h, &mut b);
        assert_eq!(a, b);
    }
}
