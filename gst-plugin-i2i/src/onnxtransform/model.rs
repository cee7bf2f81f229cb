// SPDX-License-Identifier: MPL-2.0
//! The image model of `onnxtransform`, free of GStreamer: one ONNX graph with one image
//! input and one image output, its tensor layout (NCHW or NHWC, 1 or 3 channels), element
//! type (float32, float16, uint8) and size (fixed or dynamic), and the pixel mapping around
//! it (scale, mean / std, channel order) from the properties or a JSON file next to the
//! model (`model.onnx` -> `model.json`).
//!
//! Kept apart from the element so the checks and the pixel math have unit tests of their
//! own. The work is split by thread: [`Preprocess`] (streaming thread) turns packed RGB8
//! into the input tensor's values, [`ImageModel::run`] (inference thread) only runs the
//! graph, [`Postprocess`] (output thread) turns the output tensor back into RGB8.

use std::path::{Path, PathBuf};

use half::f16;
use ort::session::Session;
use ort::value::{Tensor, TensorElementType, ValueType};

use crate::diffusion::{EngineError, ExecutionProvider};
use crate::runtime::provider::{SessionFactory, candidates};
use crate::runtime::{LogLevel, environment, log};

/// Element types an image tensor may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    F32,
    F16,
    U8,
}

impl Elem {
    pub fn name(self) -> &'static str {
        match self {
            Elem::F32 => "float32",
            Elem::F16 => "float16",
            Elem::U8 => "uint8",
        }
    }
}

/// Where the channels are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Layout {
    /// Told by the shape: the dimension of size 1 or 3 (NCHW when both could be).
    #[default]
    Auto,
    Nchw,
    Nhwc,
}

/// The order of the three colour channels in the tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ChannelOrder {
    #[default]
    Rgb,
    Bgr,
}

/// How pixels (0..=255) become tensor values and back: `x = (p * scale - mean[c]) /
/// std[c]`; the output maps back with the inverse, or with `p = y * output_scale` when
/// that is set. uint8 tensors take and give the pixels as they are.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalization {
    pub scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub order: ChannelOrder,
    pub output_scale: Option<f32>,
}

impl Default for Normalization {
    fn default() -> Self {
        Normalization {
            scale: 1.0 / 255.0,
            mean: [0.0; 3],
            std: [1.0; 3],
            order: ChannelOrder::Rgb,
            output_scale: None,
        }
    }
}

/// What the properties set (None: from the JSON file, else the default).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NormalizationOverrides {
    pub scale: Option<f32>,
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
    pub order: Option<ChannelOrder>,
    pub output_scale: Option<f32>,
    pub layout: Option<Layout>,
}

/// `"0.485,0.456,0.406"` (or one value for all three channels).
pub fn parse_triple(name: &str, text: &str) -> Result<[f32; 3], String> {
    let vals: Result<Vec<f32>, _> = text.split(',').map(|v| v.trim().parse::<f32>()).collect();
    match vals {
        Ok(v) if v.len() == 1 && v[0].is_finite() => Ok([v[0]; 3]),
        Ok(v) if v.len() == 3 && v.iter().all(|x| x.is_finite()) => Ok([v[0], v[1], v[2]]),
        _ => Err(format!(
            "{name} \"{text}\" refused: give one number or three separated by commas, e.g. 0.485,0.456,0.406"
        )),
    }
}

pub fn format_triple(v: &[f32; 3]) -> String {
    format!("{},{},{}", v[0], v[1], v[2])
}

/// The JSON file next to the model: `model.onnx` -> `model.json`.
pub fn sidecar_path(model: &Path) -> PathBuf {
    model.with_extension("json")
}

/// Reads the JSON file next to the model (if there is one) into overrides; keys: `scale`,
/// `mean`, `std` (numbers or lists of three), `channel-order` ("rgb", "bgr"),
/// `output-scale`, `layout` ("nchw", "nhwc").
pub fn read_sidecar(model: &Path) -> Result<NormalizationOverrides, EngineError> {
    let path = sidecar_path(model);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(NormalizationOverrides::default());
    };
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| EngineError::invalid(&path, format!("not valid JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| EngineError::invalid(&path, "expected a JSON object"))?;
    let bad = |key: &str, expected: &str, found: &serde_json::Value| {
        EngineError::config(&path, key, expected, found.to_string())
    };
    let num = |key: &str, v: &serde_json::Value| {
        v.as_f64()
            .filter(|x| x.is_finite())
            .map(|x| x as f32)
            .ok_or_else(|| bad(key, "a number", v))
    };
    let triple = |key: &str, v: &serde_json::Value| -> Result<[f32; 3], EngineError> {
        if let Some(a) = v.as_array() {
            let vals: Result<Vec<f32>, _> = a.iter().map(|x| num(key, x)).collect();
            match vals?.as_slice() {
                [a, b, c] => Ok([*a, *b, *c]),
                _ => Err(bad(key, "a number or a list of three numbers", v)),
            }
        } else {
            Ok([num(key, v)?; 3])
        }
    };
    let mut o = NormalizationOverrides::default();
    for (key, val) in obj {
        match key.as_str() {
            "scale" => o.scale = Some(num(key, val)?),
            "output-scale" | "output_scale" => o.output_scale = Some(num(key, val)?),
            "mean" => o.mean = Some(triple(key, val)?),
            "std" => o.std = Some(triple(key, val)?),
            "channel-order" | "channel_order" => {
                o.order = Some(match val.as_str() {
                    Some("rgb") => ChannelOrder::Rgb,
                    Some("bgr") => ChannelOrder::Bgr,
                    _ => return Err(bad(key, "\"rgb\" or \"bgr\"", val)),
                })
            }
            "layout" => {
                o.layout = Some(match val.as_str() {
                    Some("nchw") => Layout::Nchw,
                    Some("nhwc") => Layout::Nhwc,
                    _ => return Err(bad(key, "\"nchw\" or \"nhwc\"", val)),
                })
            }
            other => {
                return Err(bad(
                    other,
                    "one of scale, mean, std, channel-order, output-scale, layout",
                    &serde_json::Value::String(other.to_string()),
                ));
            }
        }
    }
    if let Some(std) = o.std
        && std.contains(&0.0)
    {
        return Err(EngineError::config(
            &path,
            "std",
            "values other than 0",
            format_triple(&std),
        ));
    }
    Ok(o)
}

/// The normalisation in effect: the properties over the JSON file over the defaults.
pub fn resolve(props: &NormalizationOverrides, file: &NormalizationOverrides) -> Normalization {
    let d = Normalization::default();
    Normalization {
        scale: props.scale.or(file.scale).unwrap_or(d.scale),
        mean: props.mean.or(file.mean).unwrap_or(d.mean),
        std: props.std.or(file.std).unwrap_or(d.std),
        order: props.order.or(file.order).unwrap_or(d.order),
        output_scale: props.output_scale.or(file.output_scale),
    }
}

/// One image tensor of the graph as declared.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageTensor {
    pub name: String,
    pub elem: Elem,
    pub layout: Layout,
    pub channels: usize,
    /// None: dynamic.
    pub batch: Option<usize>,
    pub height: Option<usize>,
    pub width: Option<usize>,
}

fn dim(v: i64) -> Option<usize> {
    (v > 0).then_some(v as usize)
}

fn shape_str(shape: &[i64]) -> String {
    let d: Vec<String> = shape
        .iter()
        .map(|&v| if v < 0 { "?".into() } else { v.to_string() })
        .collect();
    format!("[{}]", d.join(", "))
}

impl ImageTensor {
    /// Checks one declared input or output: rank 4, 1 or 3 channels, a supported type.
    pub fn describe(
        file: &Path,
        name: &str,
        ty: TensorElementType,
        shape: &[i64],
        layout: Layout,
        what: &str,
    ) -> Result<ImageTensor, EngineError> {
        let elem = match ty {
            TensorElementType::Float32 => Elem::F32,
            TensorElementType::Float16 => Elem::F16,
            TensorElementType::Uint8 => Elem::U8,
            other => {
                return Err(EngineError::tensor(
                    file,
                    name,
                    format!("a float32, float16 or uint8 image {what}"),
                    format!("element type {other}"),
                ));
            }
        };
        let expected = format!("an image {what} of rank 4 (NCHW or NHWC) with 1 or 3 channels");
        if shape.len() != 4 {
            return Err(EngineError::tensor(
                file,
                name,
                expected,
                format!("shape {}", shape_str(shape)),
            ));
        }
        let is_ch = |v: i64| v == 1 || v == 3;
        let layout = match layout {
            Layout::Auto if is_ch(shape[1]) => Layout::Nchw,
            Layout::Auto if is_ch(shape[3]) => Layout::Nhwc,
            Layout::Auto => {
                return Err(EngineError::tensor(
                    file,
                    name,
                    format!("{expected} (set layout=nchw or nhwc when the channels are dynamic)"),
                    format!("shape {}", shape_str(shape)),
                ));
            }
            l => l,
        };
        let (c, h, w) = match layout {
            Layout::Nhwc => (shape[3], shape[1], shape[2]),
            _ => (shape[1], shape[2], shape[3]),
        };
        let channels = match c {
            1 | 3 => c as usize,
            // Dynamic channels with a layout given: RGB.
            v if v < 0 => 3,
            _ => {
                return Err(EngineError::tensor(
                    file,
                    name,
                    expected,
                    format!("shape {} ({c} channels)", shape_str(shape)),
                ));
            }
        };
        Ok(ImageTensor {
            name: name.to_string(),
            elem,
            layout,
            channels,
            batch: dim(shape[0]),
            height: dim(h),
            width: dim(w),
        })
    }

    /// The tensor shape for `n` pictures of `w` x `h`.
    pub fn shape(&self, n: usize, w: usize, h: usize) -> Vec<i64> {
        let c = self.channels;
        let s = match self.layout {
            Layout::Nhwc => [n, h, w, c],
            _ => [n, c, h, w],
        };
        s.iter().map(|&v| v as i64).collect()
    }

    pub fn fixed_size(&self) -> Option<(u32, u32)> {
        Some((self.width? as u32, self.height? as u32))
    }
}

/// Tensor values of one or more pictures.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    U8(Vec<u8>),
}

impl TensorData {
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::F16(v) => v.len(),
            TensorData::U8(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn empty(elem: Elem, cap: usize) -> TensorData {
        match elem {
            Elem::F32 => TensorData::F32(Vec::with_capacity(cap)),
            Elem::F16 => TensorData::F16(Vec::with_capacity(cap)),
            Elem::U8 => TensorData::U8(Vec::with_capacity(cap)),
        }
    }

    /// Appends `other` (same element type).
    fn extend(&mut self, other: &TensorData) {
        match (self, other) {
            (TensorData::F32(a), TensorData::F32(b)) => a.extend_from_slice(b),
            (TensorData::F16(a), TensorData::F16(b)) => a.extend_from_slice(b),
            (TensorData::U8(a), TensorData::U8(b)) => a.extend_from_slice(b),
            _ => unreachable!("pictures of one model share its element type"),
        }
    }

    fn slice(&self, r: std::ops::Range<usize>) -> TensorData {
        match self {
            TensorData::F32(v) => TensorData::F32(v[r].to_vec()),
            TensorData::F16(v) => TensorData::F16(v[r].to_vec()),
            TensorData::U8(v) => TensorData::U8(v[r].to_vec()),
        }
    }
}

/// The index of the tensor channel `c` (in tensor order) in an RGB pixel.
fn rgb_index(order: ChannelOrder, c: usize) -> usize {
    match order {
        ChannelOrder::Rgb => c,
        ChannelOrder::Bgr => 2 - c,
    }
}

/// Packed RGB8 to the input tensor's values (streaming thread).
#[derive(Clone, Debug)]
pub struct Preprocess {
    pub tensor: ImageTensor,
    pub norm: Normalization,
}

impl Preprocess {
    /// The tensor value of pixel value `p` in tensor channel `k` (one table per channel).
    fn table(&self, k: usize) -> [f32; 256] {
        let n = &self.norm;
        std::array::from_fn(|p| (p as f32 * n.scale - n.mean[k]) / n.std[k])
    }

    /// One picture of `w` x `h` (`rgb` holds `w * h * 3` bytes).
    pub fn run(&self, rgb: &[u8], w: usize, h: usize) -> TensorData {
        let t = &self.tensor;
        let c = t.channels;
        let n = w * h;
        // The pixel plane each tensor channel reads: RGB index, or luma for one channel.
        let gray: Vec<u8>;
        let src: Vec<(&[u8], usize, usize)> = if c == 1 {
            gray = rgb.chunks_exact(3).map(luma).collect();
            vec![(&gray, 0, 1)]
        } else {
            (0..3)
                .map(|ch| (rgb, rgb_index(self.norm.order, ch), 3))
                .collect()
        };
        let nhwc = t.layout == Layout::Nhwc;
        // Writes channel `ch` (tensor order) of every pixel through `map`.
        fn fill<T: Copy + Default>(
            src: &[(&[u8], usize, usize)],
            n: usize,
            nhwc: bool,
            map: impl Fn(usize, u8) -> T,
        ) -> Vec<T> {
            let c = src.len();
            let mut out = vec![T::default(); n * c];
            for (ch, &(plane, off, step)) in src.iter().enumerate() {
                let pixels = plane[off..].iter().step_by(step).take(n);
                if nhwc {
                    for (o, &p) in out[ch..].iter_mut().step_by(c).zip(pixels) {
                        *o = map(ch, p);
                    }
                } else {
                    for (o, &p) in out[ch * n..(ch + 1) * n].iter_mut().zip(pixels) {
                        *o = map(ch, p);
                    }
                }
            }
            out
        }
        match t.elem {
            Elem::U8 => TensorData::U8(fill(&src, n, nhwc, |_, p| p)),
            Elem::F32 => {
                let tables: Vec<[f32; 256]> = (0..c).map(|k| self.table(k)).collect();
                TensorData::F32(fill(&src, n, nhwc, |ch, p| tables[ch][p as usize]))
            }
            Elem::F16 => {
                let tables: Vec<[f16; 256]> =
                    (0..c).map(|k| self.table(k).map(f16::from_f32)).collect();
                TensorData::F16(fill(&src, n, nhwc, |ch, p| tables[ch][p as usize]))
            }
        }
    }
}

/// BT.601 luma of an RGB pixel, for one-channel models.
fn luma(p: &[u8]) -> u8 {
    ((77 * p[0] as u32 + 150 * p[1] as u32 + 29 * p[2] as u32 + 128) >> 8) as u8
}

/// One picture from the output tensor.
#[derive(Debug)]
pub struct OutPicture {
    pub data: TensorData,
    pub width: usize,
    pub height: usize,
}

/// The output tensor's values to packed RGB8 (output thread).
#[derive(Clone, Debug)]
pub struct Postprocess {
    pub tensor: ImageTensor,
    pub norm: Normalization,
}

/// Rounds half away from zero and clamps to a pixel (NaN gives 0): for the values that
/// matter (0 and up) the same as `floor(v + 0.5)` in double precision, which is what a
/// reference computes.
fn to_pixel(v: f32) -> u8 {
    // Without a libm call: the fraction of a value in 0..=255 is exact in f32. A NaN
    // stays NaN through the clamp and becomes 0.
    let c = v.clamp(0.0, 255.0);
    let i = c as u32;
    (i + u32::from(c - i as f32 >= 0.5)) as u8
}

impl Postprocess {
    pub fn run(&self, pic: &OutPicture, out: &mut Vec<u8>) {
        let t = &self.tensor;
        let c = t.channels;
        let n = pic.width * pic.height;
        let norm = &self.norm;
        // Per tensor channel: value -> pixel.
        let maps: Vec<(f32, f32, f32)> = (0..c)
            .map(|ch| match norm.output_scale {
                Some(s) => (s, 0.0, 1.0),
                None => (norm.std[ch], norm.mean[ch], norm.scale),
            })
            .collect();
        out.clear();
        out.resize(n * 3, 0);
        let nhwc = t.layout == Layout::Nhwc;
        for (ch, &(mul, add, div)) in maps.iter().enumerate() {
            let pixel = |v: f32| -> u8 {
                if norm.output_scale.is_some() {
                    to_pixel(v * mul)
                } else {
                    to_pixel((v * mul + add) / div)
                }
            };
            // Where this channel's values are in the picture's tensor.
            let (start, step) = if nhwc { (ch, c) } else { (ch * n, 1) };
            let dst = [if c == 1 { 0 } else { rgb_index(norm.order, ch) }];
            let values = |d_len: usize| (start..d_len).step_by(step).take(n);
            let gray = c == 1;
            let d = dst[0];
            let mut put = |i: usize, p: u8| {
                if gray {
                    out[i * 3..i * 3 + 3].fill(p);
                } else {
                    out[i * 3 + d] = p;
                }
            };
            match &pic.data {
                TensorData::U8(v) => {
                    for (i, k) in values(v.len()).enumerate() {
                        put(i, v[k]);
                    }
                }
                TensorData::F32(v) if step == 1 && !gray => {
                    // The common case (NCHW, 3 channels): one plane, straight through.
                    for (o, &y) in out[d..].iter_mut().step_by(3).zip(&v[start..start + n]) {
                        *o = pixel(y);
                    }
                }
                TensorData::F32(v) => {
                    for (i, k) in values(v.len()).enumerate() {
                        put(i, pixel(v[k]));
                    }
                }
                TensorData::F16(v) => {
                    for (i, k) in values(v.len()).enumerate() {
                        put(i, pixel(v[k].to_f32()));
                    }
                }
            }
        }
    }
}

/// Fixed at load time.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelOptions {
    pub file: PathBuf,
    pub execution_provider: ExecutionProvider,
    pub device_id: i32,
    pub fp16: bool,
    pub engine_cache_dir: Option<PathBuf>,
    pub intra_threads: usize,
    pub overrides: NormalizationOverrides,
    /// ONNX Runtime's CPU memory arena (`cpu-arena`).
    pub cpu_arena: bool,
}

/// The loaded graph with its image input and output.
pub struct ImageModel {
    pub file: PathBuf,
    session: Session,
    pub input: ImageTensor,
    pub output: ImageTensor,
    pub norm: Normalization,
    pub provider: ExecutionProvider,
}

impl std::fmt::Debug for ImageModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageModel")
            .field("file", &self.file)
            .field("input", &self.input)
            .field("output", &self.output)
            .field("norm", &self.norm)
            .field("provider", &self.provider)
            .finish()
    }
}

/// What to say when the model property names a folder: it takes an `.onnx` file, and
/// which ones the folder holds.
fn onnx_files_in(dir: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "onnx"))
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let head = "is a folder: the model property takes an .onnx file";
    // model.onnx when there is one (the usual name), else the first.
    let example = names.iter().find(|n| *n == "model.onnx").or(names.first());
    match example {
        None => format!("{head}, and this folder holds none"),
        Some(e) => format!(
            "{head}, e.g. {} (the .onnx files in it: {})",
            dir.join(e).display(),
            names.join(", ")
        ),
    }
}

fn declared(o: &ort::value::Outlet) -> Option<(TensorElementType, Vec<i64>)> {
    match o.dtype() {
        ValueType::Tensor { ty, shape, .. } => Some((*ty, shape.iter().copied().collect())),
        _ => None,
    }
}

impl ImageModel {
    /// Opens the graph on the first execution provider that takes it and checks that it
    /// is an image-to-image model.
    pub fn load(opts: &ModelOptions) -> Result<ImageModel, EngineError> {
        let file = &opts.file;
        if file.is_dir() {
            return Err(EngineError::invalid(file, onnx_files_in(file)));
        }
        if !file.is_file() {
            return Err(EngineError::missing(
                file,
                "the ONNX file of the model property",
            ));
        }
        let from_file = read_sidecar(file)?;
        let norm = resolve(&opts.overrides, &from_file);
        let layout = opts
            .overrides
            .layout
            .or(from_file.layout)
            .unwrap_or_default();
        let env = environment()?;
        let mut last_err = None;
        for provider in candidates(opts.execution_provider)? {
            let cache_dir = (provider == ExecutionProvider::TensorRt).then(|| {
                opts.engine_cache_dir.clone().unwrap_or_else(|| {
                    std::env::temp_dir()
                        .join("i2i")
                        .join("tensorrt")
                        .join("onnxtransform")
                })
            });
            let factory = SessionFactory {
                env: env.clone(),
                provider,
                intra_threads: opts.intra_threads,
                device_id: opts.device_id,
                fp16: opts.fp16,
                cache_dir,
                cpu_arena: opts.cpu_arena,
            };
            match factory.session(file, None) {
                Ok(session) => return Self::check(file, session, norm, layout, provider),
                Err(e @ EngineError::Provider { .. })
                    if opts.execution_provider == ExecutionProvider::Auto =>
                {
                    log(
                        LogLevel::Warning,
                        &format!("{provider:?} not usable for {}: {e}", file.display()),
                    );
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| EngineError::invalid(file, "no execution provider")))
    }

    fn check(
        file: &Path,
        session: Session,
        norm: Normalization,
        layout: Layout,
        provider: ExecutionProvider,
    ) -> Result<ImageModel, EngineError> {
        let inputs = session.inputs();
        if inputs.len() != 1 {
            let names: Vec<&str> = inputs.iter().map(|o| o.name()).collect();
            return Err(EngineError::tensor(
                file,
                names.join(", "),
                "exactly one input (an image)",
                format!("{} inputs {names:?}", inputs.len()),
            ));
        }
        let Some(out0) = session.outputs().first() else {
            return Err(EngineError::tensor(
                file,
                "",
                "an image output",
                "no outputs",
            ));
        };
        let side = |o: &ort::value::Outlet, what: &str| -> Result<ImageTensor, EngineError> {
            let (ty, shape) = declared(o).ok_or_else(|| {
                EngineError::tensor(
                    file,
                    o.name(),
                    format!("a tensor {what}"),
                    o.dtype().to_string(),
                )
            })?;
            ImageTensor::describe(file, o.name(), ty, &shape, layout, what)
        };
        let input = side(&inputs[0], "input")?;
        let output = side(out0, "output")?;
        if norm.std.contains(&0.0) {
            return Err(EngineError::argument(
                "std",
                "values other than 0",
                format_triple(&norm.std),
            ));
        }
        Ok(ImageModel {
            file: file.to_path_buf(),
            session,
            input,
            output,
            norm,
            provider,
        })
    }

    pub fn preprocess(&self) -> Preprocess {
        Preprocess {
            tensor: self.input.clone(),
            norm: self.norm.clone(),
        }
    }

    pub fn postprocess(&self) -> Postprocess {
        Postprocess {
            tensor: self.output.clone(),
            norm: self.norm.clone(),
        }
    }

    /// The size the model runs at: its fixed size, else `want`.
    pub fn model_size(&self, want: (u32, u32)) -> (u32, u32) {
        self.input.fixed_size().unwrap_or(want)
    }

    /// The output picture size for input pictures of `w` x `h`: the declared one, else
    /// found by running the graph once on a black picture.
    pub fn output_size(&mut self, w: u32, h: u32) -> Result<(u32, u32), EngineError> {
        if let Some(s) = self.output.fixed_size() {
            return Ok(s);
        }
        let black = vec![0u8; w as usize * h as usize * 3];
        let frame = self.preprocess().run(&black, w as usize, h as usize);
        let out = self.run(vec![frame], w as usize, h as usize)?;
        let p = out.first().ok_or_else(|| {
            EngineError::inference(&self.file, "the model gave no picture for a test frame")
        })?;
        Ok((p.width as u32, p.height as u32))
    }

    /// Runs the graph on `frames` (pictures of `w` x `h` from [`Preprocess`]): all in one
    /// call when the batch is dynamic, else in calls of the declared batch size (the last
    /// padded by repeating its last picture). One output picture per frame, in order.
    pub fn run(
        &mut self,
        frames: Vec<TensorData>,
        w: usize,
        h: usize,
    ) -> Result<Vec<OutPicture>, EngineError> {
        let per = w * h * self.input.channels;
        if let Some(bad) = frames.iter().find(|f| f.len() != per) {
            return Err(EngineError::argument(
                format!("input picture for {}", self.input.name),
                format!("{per} values ({w}x{h}x{})", self.input.channels),
                format!("{} values", bad.len()),
            ));
        }
        let step = self.input.batch.unwrap_or(frames.len().max(1));
        let mut outs = Vec::with_capacity(frames.len());
        let mut frames = frames.into_iter().peekable();
        while frames.peek().is_some() {
            let chunk: Vec<TensorData> = frames.by_ref().take(step).collect();
            let k = chunk.len();
            let data = if step == 1 {
                chunk.into_iter().next().expect("chunks are not empty")
            } else {
                let mut data = TensorData::empty(self.input.elem, per * step);
                for f in &chunk {
                    data.extend(f);
                }
                for _ in k..step {
                    data.extend(chunk.last().expect("chunks are not empty"));
                }
                data
            };
            let shape = self.input.shape(step, w, h);
            let mut pics = self.call(data, shape)?;
            pics.truncate(k);
            outs.extend(pics);
        }
        Ok(outs)
    }

    fn call(&mut self, data: TensorData, shape: Vec<i64>) -> Result<Vec<OutPicture>, EngineError> {
        let file = self.file.clone();
        let err = |e: ort::Error| EngineError::inference(&file, e);
        let name = self.input.name.clone();
        let value: ort::value::DynValue = match data {
            TensorData::F32(v) => Tensor::from_array((shape, v)).map_err(err)?.into_dyn(),
            TensorData::F16(v) => Tensor::from_array((shape, v)).map_err(err)?.into_dyn(),
            TensorData::U8(v) => Tensor::from_array((shape, v)).map_err(err)?.into_dyn(),
        };
        let outputs = self.session.run(ort::inputs![name => value]).map_err(err)?;
        let out = &outputs[self.output.name.as_str()];
        let (shape, data): (Vec<i64>, TensorData) = match self.output.elem {
            Elem::F32 => {
                let (s, d) = out.try_extract_tensor::<f32>().map_err(err)?;
                (s.iter().copied().collect(), TensorData::F32(d.to_vec()))
            }
            Elem::F16 => {
                let (s, d) = out.try_extract_tensor::<f16>().map_err(err)?;
                (s.iter().copied().collect(), TensorData::F16(d.to_vec()))
            }
            Elem::U8 => {
                let (s, d) = out.try_extract_tensor::<u8>().map_err(err)?;
                (s.iter().copied().collect(), TensorData::U8(d.to_vec()))
            }
        };
        let t = ImageTensor::describe(
            &file,
            &self.output.name,
            TensorElementType::Float32,
            &shape,
            self.output.layout,
            "output",
        )?;
        if t.channels != self.output.channels {
            return Err(EngineError::tensor(
                &file,
                &self.output.name,
                format!("{} channels", self.output.channels),
                format!("shape {}", shape_str(&shape)),
            ));
        }
        let (n, oh, ow) = (
            shape[0] as usize,
            t.height.unwrap_or(0),
            t.width.unwrap_or(0),
        );
        let per = oh * ow * t.channels;
        if per == 0 || data.len() != n * per {
            return Err(EngineError::tensor(
                &file,
                &self.output.name,
                "a non-empty picture per frame",
                format!("shape {}", shape_str(&shape)),
            ));
        }
        if n == 1 {
            return Ok(vec![OutPicture {
                data,
                width: ow,
                height: oh,
            }]);
        }
        Ok((0..n)
            .map(|i| OutPicture {
                data: data.slice(i * per..(i + 1) * per),
                width: ow,
                height: oh,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(layout: Layout, elem: Elem, channels: usize) -> ImageTensor {
        ImageTensor {
            name: "x".into(),
            elem,
            layout,
            channels,
            batch: None,
            height: None,
            width: None,
        }
    }

    #[test]
    fn layouts_are_told_from_the_shape_and_wrong_shapes_are_named() {
        let f = Path::new("m.onnx");
        let t = |shape: &[i64]| {
            ImageTensor::describe(
                f,
                "x",
                TensorElementType::Float32,
                shape,
                Layout::Auto,
                "input",
            )
        };
        let nchw = t(&[1, 3, -1, -1]).unwrap();
        assert_eq!(
            (nchw.layout, nchw.channels, nchw.batch),
            (Layout::Nchw, 3, Some(1))
        );
        let nhwc = t(&[-1, 224, 224, 3]).unwrap();
        assert_eq!(
            (nhwc.layout, nhwc.fixed_size()),
            (Layout::Nhwc, Some((224, 224)))
        );
        let gray = t(&[1, 1, 224, 224]).unwrap();
        assert_eq!(gray.channels, 1);
        let e = t(&[1, 10]).unwrap_err().to_string();
        assert!(e.contains("rank 4") && e.contains("[1, 10]"), "{e}");
        let e = t(&[1, 5, 8, 8]).unwrap_err().to_string();
        assert!(e.contains("[1, 5, 8, 8]"), "{e}");
        let e = ImageTensor::describe(
            f,
            "ids",
            TensorElementType::Int64,
            &[1, 3, 8, 8],
            Layout::Auto,
            "input",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("ids") && e.contains("i64"), "{e}");
    }

    #[test]
    fn pixels_round_trip_through_every_layout_and_type() {
        let rgb: Vec<u8> = (0..2 * 3 * 3).map(|v| (v * 13 % 256) as u8).collect();
        let norm = Normalization {
            scale: 1.0 / 255.0,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            order: ChannelOrder::Bgr,
            output_scale: None,
        };
        for layout in [Layout::Nchw, Layout::Nhwc] {
            for elem in [Elem::F32, Elem::F16, Elem::U8] {
                let t = tensor(layout, elem, 3);
                let pre = Preprocess {
                    tensor: t.clone(),
                    norm: norm.clone(),
                };
                let data = pre.run(&rgb, 3, 2);
                let post = Postprocess {
                    tensor: t,
                    norm: norm.clone(),
                };
                let mut out = Vec::new();
                post.run(
                    &OutPicture {
                        data,
                        width: 3,
                        height: 2,
                    },
                    &mut out,
                );
                assert_eq!(out, rgb, "{layout:?} {elem:?}");
            }
        }
        // BGR NCHW: the first plane is blue.
        let pre = Preprocess {
            tensor: tensor(Layout::Nchw, Elem::U8, 3),
            norm,
        };
        let TensorData::U8(d) = pre.run(&rgb, 3, 2) else {
            panic!()
        };
        assert_eq!(d[0], rgb[2]);
        assert_eq!(d[6], rgb[1]);
    }

    #[test]
    fn pixels_round_half_away_and_clamp() {
        for (v, p) in [
            (0.499_999_97f32, 0u8),
            (0.5, 1),
            (1.5, 2),
            (127.499_99, 127),
            (254.5, 255),
            (255.7, 255),
            (1e9, 255),
            (-3.0, 0),
            (-0.5, 0),
            (f32::NAN, 0),
        ] {
            assert_eq!(to_pixel(v), p, "{v}");
            if v.is_finite() {
                assert_eq!(to_pixel(v), v.round().clamp(0.0, 255.0) as u8, "{v}");
            }
        }
    }

    #[test]
    fn one_channel_models_see_luma_and_give_grey() {
        let pre = Preprocess {
            tensor: tensor(Layout::Nchw, Elem::U8, 1),
            norm: Normalization::default(),
        };
        let TensorData::U8(d) = pre.run(&[255, 255, 255, 0, 0, 0], 2, 1) else {
            panic!()
        };
        assert_eq!(d, vec![255, 0]);
        let post = Postprocess {
            tensor: tensor(Layout::Nchw, Elem::F32, 1),
            norm: Normalization {
                output_scale: Some(255.0),
                ..Normalization::default()
            },
        };
        let mut out = Vec::new();
        post.run(
            &OutPicture {
                data: TensorData::F32(vec![0.5, 2.0]),
                width: 2,
                height: 1,
            },
            &mut out,
        );
        assert_eq!(out, vec![128, 128, 128, 255, 255, 255]);
    }

    #[test]
    fn sidecar_values_and_their_errors() {
        let dir =
            std::env::temp_dir().join(format!("onnxtransform-sidecar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let model = dir.join("m.onnx");
        std::fs::write(
            dir.join("m.json"),
            r#"{"scale": 1, "mean": [1, 2, 3], "std": 2, "channel-order": "bgr"}"#,
        )
        .unwrap();
        let o = read_sidecar(&model).unwrap();
        assert_eq!(o.scale, Some(1.0));
        assert_eq!(o.mean, Some([1.0, 2.0, 3.0]));
        assert_eq!(o.std, Some([2.0; 3]));
        let props = NormalizationOverrides {
            scale: Some(0.5),
            ..Default::default()
        };
        let n = resolve(&props, &o);
        assert_eq!((n.scale, n.order), (0.5, ChannelOrder::Bgr));
        std::fs::write(dir.join("m.json"), r#"{"channel-order": "rbg"}"#).unwrap();
        let e = read_sidecar(&model).unwrap_err().to_string();
        assert!(
            e.contains("m.json") && e.contains("channel-order") && e.contains("rbg"),
            "{e}"
        );
        std::fs::write(dir.join("m.json"), "{").unwrap();
        assert!(
            read_sidecar(&model)
                .unwrap_err()
                .to_string()
                .contains("m.json")
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(parse_triple("mean", "0.5").unwrap(), [0.5; 3]);
        assert!(
            parse_triple("mean", "1,2")
                .unwrap_err()
                .contains("mean \"1,2\"")
        );
    }
}
