// SPDX-License-Identifier: MPL-2.0
//! IP-Adapter: the style or subject of a picture as N image tokens after the 77 text rows of
//! the UNet's `encoder_hidden_states`, weighted per layer by its `ipadapter_scale` input
//! (docs/models.md, "IP-Adapter models"; the numpy reference is
//! tests/python/reference_style.py).
//!
//! [`ImageSide`] is the picture's side (CLIP preprocessing, `image_encoder/`, `image_proj/`):
//! it owns its own ONNX sessions, so that it runs on a thread of its own and never on the
//! inference thread. [`IpTokens`] is the engine's side: the tokens the frames get, faded
//! over `transition-frames` as prompts are, and the per-layer scale.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use i2i_core::settings::blend::{BlendMode, Fade, embedding_transition};

use super::EngineError;
use crate::runtime::graph::{Feed, Graph};
use crate::runtime::provider::SessionFactory;

/// The UNet input that makes a model an IP-Adapter model.
pub const SCALE_INPUT: &str = "ipadapter_scale";

/// The text rows of `encoder_hidden_states` before the image tokens.
pub const TEXT_ROWS: usize = 77;

/// What the UNet's inputs say: N image tokens of width D, L IP layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpLayout {
    pub tokens: usize,
    pub width: usize,
    pub layers: usize,
}

impl IpLayout {
    /// The layout of a UNet graph, `None` without `ipadapter_scale`; an error names the input
    /// whose shape does not fit.
    pub fn of(graph: &Graph) -> Result<Option<IpLayout>, EngineError> {
        let Some(scale) = graph.input(SCALE_INPUT) else {
            return Ok(None);
        };
        let file = &graph.file;
        let layers = match (scale.rank(), scale.dim(0), scale.elem.is_float()) {
            (1, Some(l), true) if l > 0 => l,
            _ => {
                return Err(EngineError::tensor(
                    file,
                    SCALE_INPUT,
                    "float32 [L] (one scale per IP-Adapter layer, L fixed)",
                    scale.to_string(),
                ));
            }
        };
        let hidden = graph.input("encoder_hidden_states").ok_or_else(|| {
            EngineError::tensor(file, "encoder_hidden_states", "an input", "none")
        })?;
        match (hidden.dim(1), hidden.dim(2)) {
            (Some(rows), Some(width)) if rows > TEXT_ROWS => Ok(Some(IpLayout {
                tokens: rows - TEXT_ROWS,
                width,
                layers,
            })),
            _ => Err(EngineError::tensor(
                file,
                "encoder_hidden_states",
                "[batch, 77 + N, D] with N > 0 image tokens and D fixed (an IP-Adapter UNet)",
                hidden.to_string(),
            )),
        }
    }
}

/// `ip-adapter-scale`: one value for every layer or one per layer, each in 0..=2.
pub fn parse_scale(text: &str) -> Result<Vec<f32>, String> {
    let vals = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<f32>()
                .ok()
                .filter(|v| (0.0..=2.0).contains(v))
                .ok_or_else(|| format!("\"{s}\" is not a number in 0..2"))
        })
        .collect::<Result<Vec<f32>, String>>()
        .map_err(|e| format!("ip-adapter-scale \"{text}\" refused: {e}"))?;
    if vals.is_empty() {
        return Err(format!(
            "ip-adapter-scale \"{text}\" refused: give one value or one per layer"
        ));
    }
    Ok(vals)
}

/// `ipadapter_scale` `[L]` from one value or one per layer (reference_style.scale_vector).
pub fn scale_vector(vals: &[f32], layers: usize) -> Result<Vec<f32>, String> {
    match vals.len() {
        1 => Ok(vec![vals[0]; layers]),
        n if n == layers => Ok(vals.to_vec()),
        n => Err(format!(
            "ip-adapter-scale: {n} values for a UNet with {layers} IP-Adapter layers (give one value or {layers})"
        )),
    }
}

/// The conditioning rows `[1, rows, E]` (text rows first, SDXL's pooled rows last) with the
/// image tokens `[N, E]` put after the first `text_rows` rows.
pub fn with_tokens(text: &[f32], text_rows: usize, width: usize, tokens: &[f32]) -> Vec<f32> {
    let at = text_rows * width;
    let mut v = Vec::with_capacity(text.len() + tokens.len());
    v.extend_from_slice(&text[..at]);
    v.extend_from_slice(tokens);
    v.extend_from_slice(&text[at..]);
    v
}

/// transformers' CLIPImageProcessor settings (feature_extractor/preprocessor_config.json).
#[derive(Clone, Debug)]
struct ClipPreprocess {
    resize: Option<u32>,
    crop: Option<(u32, u32)>,
    rescale: f64,
    mean: [f32; 3],
    std: [f32; 3],
    normalize: bool,
}

fn read_preprocess(file: &Path, size: u32) -> Result<ClipPreprocess, EngineError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| EngineError::missing(file, format!("CLIPImageProcessor settings ({e})")))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| EngineError::invalid(file, format!("not valid JSON ({e})")))?;
    let num = |v: &serde_json::Value, k: &str| v.get(k).and_then(serde_json::Value::as_u64);
    let edge = |v: Option<&serde_json::Value>| -> Option<u32> {
        let v = v?;
        v.as_u64()
            .or_else(|| num(v, "shortest_edge"))
            .or_else(|| num(v, "height"))
            .map(|x| x as u32)
    };
    let flag = |k: &str| {
        v.get(k)
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(true)
    };
    let triple = |k: &str, d: [f32; 3]| -> Result<[f32; 3], EngineError> {
        match v.get(k).and_then(serde_json::Value::as_array) {
            None => Ok(d),
            Some(a) if a.len() == 3 => {
                let mut o = [0.0; 3];
                for (x, y) in o.iter_mut().zip(a) {
                    *x = y.as_f64().ok_or_else(|| {
                        EngineError::config(file, k, "three numbers", y.to_string())
                    })? as f32;
                }
                Ok(o)
            }
            Some(a) => Err(EngineError::config(
                file,
                k,
                "three numbers",
                format!("{} values", a.len()),
            )),
        }
    };
    if let Some(r) = v.get("resample").and_then(serde_json::Value::as_u64)
        && r != 3
    {
        return Err(EngineError::config(
            file,
            "resample",
            "3 (bicubic)",
            r.to_string(),
        ));
    }
    let crop = v.get("crop_size").map(|c| match c.as_u64() {
        Some(s) => (s as u32, s as u32),
        None => (
            num(c, "height").unwrap_or(size as u64) as u32,
            num(c, "width").unwrap_or(size as u64) as u32,
        ),
    });
    Ok(ClipPreprocess {
        resize: if flag("do_resize") {
            Some(edge(v.get("size")).unwrap_or(size))
        } else {
            None
        },
        crop: if flag("do_center_crop") {
            Some(crop.unwrap_or((size, size)))
        } else {
            None
        },
        rescale: v
            .get("rescale_factor")
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(1.0 / 255.0),
        mean: triple("image_mean", [0.481_454_66, 0.457_827_5, 0.408_210_73])?,
        std: triple("image_std", [0.268_629_54, 0.261_302_6, 0.275_777_1])?,
        normalize: flag("do_normalize"),
    })
}

impl ClipPreprocess {
    /// Packed RGB8 `w` x `h` -> `pixel_values` `[3, S, S]` planar float32, as
    /// CLIPImageProcessor does: shortest edge to S (bicubic), centre crop, rescale, normalise.
    fn run(&self, rgb: &[u8], w: u32, h: u32, want: (u32, u32)) -> Result<Vec<f32>, String> {
        let mut img = image::RgbImage::from_raw(w, h, rgb.to_vec())
            .ok_or_else(|| format!("{} bytes are not a {w}x{h} RGB picture", rgb.len()))?;
        if let Some(edge) = self.resize {
            let (short, long) = if w <= h { (w, h) } else { (h, w) };
            // As Python computes it: int(edge * long / short).
            let new_long = (f64::from(edge) * f64::from(long) / f64::from(short.max(1))) as u32;
            let (nw, nh) = if w <= h {
                (edge, new_long)
            } else {
                (new_long, edge)
            };
            if (nw, nh) != (w, h) {
                img = pil_bicubic(&img, nw, nh);
            }
        }
        if let Some((ch, cw)) = self.crop {
            let (iw, ih) = img.dimensions();
            if iw < cw || ih < ch {
                return Err(format!(
                    "the picture ({iw}x{ih} after resizing) is smaller than the crop {cw}x{ch}"
                ));
            }
            let (top, left) = ((ih - ch) / 2, (iw - cw) / 2);
            img = image::imageops::crop_imm(&img, left, top, cw, ch).to_image();
        }
        let (iw, ih) = img.dimensions();
        if (ih, iw) != want {
            return Err(format!(
                "the preprocessed picture is {iw}x{ih}, the image encoder takes {}x{}",
                want.1, want.0
            ));
        }
        let plane = (iw * ih) as usize;
        let mut out = vec![0.0f32; 3 * plane];
        for (i, px) in img.pixels().enumerate() {
            for c in 0..3 {
                let mut x = (f64::from(px.0[c]) * self.rescale) as f32;
                if self.normalize {
                    x = (x - self.mean[c]) / self.std[c];
                }
                out[c * plane + i] = x;
            }
        }
        Ok(out)
    }
}

/// PIL's bicubic kernel (a = -0.5), support 2.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Fixed-point bits of PIL's 8-bit resampling coefficients.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's `precompute_coeffs` for one axis, then `normalize_coeffs_8bpc`: per output pixel
/// the first input pixel and the fixed-point weights.
fn pil_coeffs(in_size: u32, out_size: u32) -> Vec<(usize, Vec<i32>)> {
    let scale = f64::from(in_size) / f64::from(out_size);
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (f64::from(xx) + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C's (int) truncates towards zero.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size)) - xmin;
            let mut k: Vec<f64> = (0..xmax.max(0))
                .map(|x| bicubic(((x + xmin) as f64 - center + 0.5) * ss))
                .collect();
            let ww: f64 = k.iter().sum();
            if ww != 0.0 {
                for v in &mut k {
                    *v /= ww;
                }
            }
            let one = f64::from(1u32 << PRECISION_BITS);
            let fixed = k
                .iter()
                .map(|&v| {
                    if v < 0.0 {
                        (-0.5 + v * one) as i32
                    } else {
                        (0.5 + v * one) as i32
                    }
                })
                .collect();
            (xmin as usize, fixed)
        })
        .collect()
}

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// `PIL.Image.resize(size, BICUBIC)` on RGB8, bit for bit: a horizontal pass, then a
/// vertical one, each rounded to 8 bits (what transformers' `CLIPImageProcessor` runs).
fn pil_bicubic(img: &image::RgbImage, nw: u32, nh: u32) -> image::RgbImage {
    let (w, h) = img.dimensions();
    let src = img.as_raw();
    let round = 1i64 << (PRECISION_BITS - 1);
    let horizontal = if nw != w {
        let cx = pil_coeffs(w, nw);
        let mut out = vec![0u8; (nw * h * 3) as usize];
        for y in 0..h as usize {
            let row = &src[y * w as usize * 3..(y + 1) * w as usize * 3];
            for (x, (x0, k)) in cx.iter().enumerate() {
                for c in 0..3 {
                    let mut acc = round;
                    for (i, &kv) in k.iter().enumerate() {
                        acc += i64::from(row[(x0 + i) * 3 + c]) * i64::from(kv);
                    }
                    out[(y * nw as usize + x) * 3 + c] = clip8(acc);
                }
            }
        }
        out
    } else {
        src.clone()
    };
    let out = if nh != h {
        let cy = pil_coeffs(h, nh);
        let stride = nw as usize * 3;
        let mut out = vec![0u8; nh as usize * stride];
        for (y, (y0, k)) in cy.iter().enumerate() {
            for i in 0..stride {
                let mut acc = round;
                for (j, &kv) in k.iter().enumerate() {
                    acc += i64::from(horizontal[(y0 + j) * stride + i]) * i64::from(kv);
                }
                out[y * stride + i] = clip8(acc);
            }
        }
        out
    } else {
        horizontal
    };
    image::RgbImage::from_raw(nw, nh, out).expect("the resized size")
}

/// The picture's side of an IP-Adapter model: `feature_extractor/`, `image_encoder/` and
/// `image_proj/`, with sessions of its own.
pub struct ImageSide {
    dir: PathBuf,
    pre: ClipPreprocess,
    encoder: Graph,
    proj: Graph,
    /// The encoder output the projection takes (`image_embeds` or `hidden_states`).
    proj_input: String,
    /// The encoder's input size (S, S).
    size: (u32, u32),
    layout: IpLayout,
    buf: Vec<f32>,
}

impl std::fmt::Debug for ImageSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageSide")
            .field("dir", &self.dir)
            .field("proj_input", &self.proj_input)
            .field("layout", &self.layout)
            .finish()
    }
}

impl ImageSide {
    /// Opens the image side of `dir` on the CPU with `threads` intra-op threads (0: ONNX
    /// Runtime decides) and the CPU arena or not (`cpu-arena`), for a UNet of `layout`.
    pub fn load(
        dir: &Path,
        layout: IpLayout,
        threads: usize,
        cpu_arena: bool,
    ) -> Result<ImageSide, EngineError> {
        let env = crate::runtime::environment()?;
        let factory = SessionFactory {
            env,
            provider: super::ExecutionProvider::Cpu,
            intra_threads: threads,
            device_id: 0,
            fp16: false,
            cache_dir: None,
            cpu_arena,
        };
        let file = |sub: &str| -> Result<PathBuf, EngineError> {
            let f = dir.join(sub).join("model.onnx");
            if f.is_file() {
                Ok(f)
            } else {
                Err(EngineError::missing(
                    &f,
                    format!(
                        "the IP-Adapter {sub} graph (the UNet takes '{SCALE_INPUT}'; see docs/models.md, \"IP-Adapter models\")"
                    ),
                ))
            }
        };
        let encoder = factory.open(&file("image_encoder")?, None)?;
        let proj = factory.open(&file("image_proj")?, None)?;
        let pixels = encoder.require_input("pixel_values", "the picture [1, 3, S, S]")?;
        let size = match (pixels.rank(), pixels.dim(2), pixels.dim(3)) {
            (4, Some(h), Some(w)) => (h as u32, w as u32),
            _ => {
                return Err(EngineError::tensor(
                    &encoder.file,
                    "pixel_values",
                    "float32 [batch, 3, S, S] with S fixed",
                    pixels.to_string(),
                ));
            }
        };
        let proj_input = match proj.inputs.as_slice() {
            [one] if encoder.output(&one.name).is_some() => one.name.clone(),
            ins => {
                let outs: Vec<&str> = encoder.outputs.iter().map(|o| o.name.as_str()).collect();
                let found: Vec<&str> = ins.iter().map(|i| i.name.as_str()).collect();
                return Err(EngineError::tensor(
                    &proj.file,
                    "inputs",
                    format!("one input named after an image_encoder output {outs:?}"),
                    format!("{found:?}"),
                ));
            }
        };
        let out = proj.pick_output(&["image_prompt_embeds"], "image tokens [batch, N, D]")?;
        if out.dim(1).is_some_and(|n| n != layout.tokens)
            || out.dim(2).is_some_and(|d| d != layout.width)
        {
            return Err(EngineError::tensor(
                &proj.file,
                &out.name,
                format!(
                    "[batch, {}, {}] (the UNet's image tokens)",
                    layout.tokens, layout.width
                ),
                out.to_string(),
            ));
        }
        let pre = read_preprocess(
            &dir.join("feature_extractor")
                .join("preprocessor_config.json"),
            size.0,
        )?;
        Ok(ImageSide {
            dir: dir.to_path_buf(),
            pre,
            encoder,
            proj,
            proj_input,
            size,
            layout,
            buf: Vec::new(),
        })
    }

    pub fn layout(&self) -> IpLayout {
        self.layout
    }

    fn tokens_for_pixels(&mut self, pixels: &[f32]) -> Result<Vec<f32>, EngineError> {
        let shape = [1, 3, self.size.0 as i64, self.size.1 as i64];
        let fshape = self.encoder.run(
            &[("pixel_values", &shape, Feed::F32(pixels))],
            &self.proj_input,
            &mut self.buf,
        )?;
        self.project(&fshape)
    }

    /// `image_proj` of the features in `self.buf` (shape `fshape`).
    fn project(&mut self, fshape: &[i64]) -> Result<Vec<f32>, EngineError> {
        let feats = std::mem::take(&mut self.buf);
        let output = self.proj.outputs[0].name.clone();
        let mut out = Vec::new();
        let shape = self.proj.run(
            &[(self.proj_input.as_str(), fshape, Feed::F32(&feats))],
            &output,
            &mut out,
        )?;
        self.buf = feats;
        let want = [1, self.layout.tokens as i64, self.layout.width as i64];
        if shape != want {
            return Err(EngineError::tensor(
                &self.proj.file,
                &output,
                format!("{want:?}"),
                format!("{shape:?}"),
            ));
        }
        Ok(out)
    }

    /// The image tokens `[N * D]` of a packed RGB8 picture of any size.
    pub fn tokens(&mut self, rgb: &[u8], w: u32, h: u32) -> Result<Vec<f32>, EngineError> {
        let pixels = self
            .pre
            .run(rgb, w, h, self.size)
            .map_err(|e| EngineError::argument("IP-Adapter picture", "a picture", e))?;
        self.tokens_for_pixels(&pixels)
    }

    /// The negative tokens (guidance rows while a picture is set): `image_proj` of zero
    /// `image_embeds`, or of the encoder's output for all-zero `pixel_values`.
    pub fn negative_tokens(&mut self) -> Result<Vec<f32>, EngineError> {
        if self.proj_input == "image_embeds" {
            let spec = self.proj.inputs[0].clone();
            let mut shape: Vec<i64> = vec![1];
            for d in 1..spec.rank() {
                shape.push(spec.dim(d).ok_or_else(|| {
                    EngineError::tensor(
                        &self.proj.file,
                        &spec.name,
                        "fixed sizes",
                        spec.to_string(),
                    )
                })? as i64);
            }
            self.buf.clear();
            self.buf.resize(shape.iter().product::<i64>() as usize, 0.0);
            return self.project(&shape);
        }
        let zeros = vec![0.0f32; 3 * (self.size.0 * self.size.1) as usize];
        self.tokens_for_pixels(&zeros)
    }
}

/// The largest style picture file read.
pub const MAX_PICTURE_BYTES: u64 = 64 << 20;
/// The most pixels a style picture may declare (4096 x 4096), checked before decoding.
pub const MAX_PICTURE_PIXELS: u64 = 4096 * 4096;

/// A JPEG or PNG file as packed RGB8 `(pixels, width, height)`; the error says why not.
/// JPEG goes through libjpeg-turbo (as Pillow's does, so the pixels are the reference's),
/// PNG through the `png` decoder of the `image` crate. The file is read within
/// [`MAX_PICTURE_BYTES`] and its declared size checked against [`MAX_PICTURE_PIXELS`]
/// before anything is decoded (settings that name it may come from the network).
pub fn decode_picture(path: &Path) -> Result<(Vec<u8>, u32, u32), String> {
    let data = i2i_core::files::read_at_most(path, MAX_PICTURE_BYTES, "a style picture")?;
    let too_large = |w: u64, h: u64| {
        format!(
            "{}: the header declares {w} x {h} pixels, over the limit of {MAX_PICTURE_PIXELS} \
             for a style picture (it is resized to the encoder's size anyway); nothing was decoded",
            path.display()
        )
    };
    if data.starts_with(&[0xff, 0xd8]) {
        let (w, h) = i2i_core::jpeg::jpeg_size(&data, 0)
            .map_err(|e| format!("{}: not a JPEG picture ({e})", path.display()))?;
        if (w as u64) * (h as u64) > MAX_PICTURE_PIXELS {
            return Err(too_large(w as u64, h as u64));
        }
        let img = turbojpeg::decompress(&data, turbojpeg::PixelFormat::RGB)
            .map_err(|e| format!("{}: not a JPEG picture ({e})", path.display()))?;
        let (w, h) = (img.width as u32, img.height as u32);
        let mut rgb = Vec::with_capacity(img.width * img.height * 3);
        for row in img.pixels.chunks(img.pitch).take(img.height) {
            rgb.extend_from_slice(&row[..img.width * 3]);
        }
        return Ok((rgb, w, h));
    }
    let not_png =
        |e: image::ImageError| format!("{}: not a JPEG or PNG picture ({e})", path.display());
    let reader =
        || image::ImageReader::with_format(std::io::Cursor::new(&data), image::ImageFormat::Png);
    let (w, h) = reader().into_dimensions().map_err(not_png)?;
    if u64::from(w) * u64::from(h) > MAX_PICTURE_PIXELS {
        return Err(too_large(w.into(), h.into()));
    }
    let img = reader().decode().map_err(not_png)?.into_rgb8();
    let (w, h) = img.dimensions();
    Ok((img.into_raw(), w, h))
}

/// The picture's tokens as the engine holds them: positive and negative, `[N * D]` each.
#[derive(Clone, Debug, PartialEq)]
pub struct PictureTokens {
    pub tokens: Arc<Vec<f32>>,
    pub negative: Arc<Vec<f32>>,
}

/// The engine's IP-Adapter state: the tokens frames get now (faded towards a new picture
/// over `transition-frames`), the per-layer scale.
#[derive(Debug)]
pub struct IpTokens {
    pub layout: IpLayout,
    /// The picture set, `None` for none (zero tokens).
    target: Option<PictureTokens>,
    /// The positive tokens frames get now.
    current: Vec<f32>,
    negative: Vec<f32>,
    fade: Option<(Vec<f32>, Vec<f32>, Fade, BlendMode)>,
    pub scale: Vec<f32>,
    /// Counts changes of `current` / `negative`.
    pub generation: u64,
}

impl IpTokens {
    pub fn new(layout: IpLayout) -> IpTokens {
        let zeros = vec![0.0; layout.tokens * layout.width];
        IpTokens {
            layout,
            target: None,
            current: zeros.clone(),
            negative: zeros,
            fade: None,
            scale: vec![1.0; layout.layers],
            generation: 0,
        }
    }

    /// A new picture (`None`: none): a jump, or a fade over `frames` frames.
    pub fn set(&mut self, p: Option<PictureTokens>, frames: u32, mode: BlendMode) {
        if p == self.target {
            return;
        }
        let n = self.layout.tokens * self.layout.width;
        let (to, neg) = match &p {
            Some(p) => (p.tokens.to_vec(), p.negative.to_vec()),
            None => (vec![0.0; n], vec![0.0; n]),
        };
        self.target = p;
        // The negative rows jump: they are what the guidance subtracts, not what is shown.
        self.negative = neg;
        if frames > 0 {
            self.fade = Some((
                self.current.clone(),
                to,
                Fade::new(frames.saturating_add(1)),
                mode,
            ));
        } else {
            self.fade = None;
            self.current = to;
        }
        self.generation += 1;
    }

    pub fn has_picture(&self) -> bool {
        self.target.is_some()
    }

    /// Before a model call of `frames` new frames: a fade moves on. True when the tokens
    /// changed.
    pub fn step(&mut self, frames: usize) -> bool {
        let Some((from, to, fade, mode)) = &mut self.fade else {
            return false;
        };
        let mut t = fade.t();
        for _ in 0..frames.max(1) {
            t = fade.step();
        }
        if fade.finished() {
            self.current = std::mem::take(to);
            self.fade = None;
        } else {
            self.current = embedding_transition(from, to, t, *mode, self.layout.width.max(1));
        }
        self.generation += 1;
        true
    }

    pub fn current(&self) -> &[f32] {
        &self.current
    }

    pub fn negative(&self) -> &[f32] {
        &self.negative
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pictures_declaring_too_many_pixels_are_refused_before_decoding() {
        let dir = std::env::temp_dir().join(format!("i2i-ip-bomb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A small JPEG whose frame header is rewritten to declare 8192 x 8192.
        let img = turbojpeg::Image {
            pixels: vec![128u8; 8 * 8 * 3],
            width: 8,
            pitch: 8 * 3,
            height: 8,
            format: turbojpeg::PixelFormat::RGB,
        };
        let mut j = turbojpeg::compress(img.as_deref(), 90, turbojpeg::Subsamp::Sub2x2)
            .unwrap()
            .to_vec();
        let sof = j
            .windows(2)
            .position(|m| m[0] == 0xff && m[1] == 0xc0)
            .unwrap();
        j[sof + 5..sof + 9].copy_from_slice(&[0x20, 0, 0x20, 0]);
        let jpeg = dir.join("bomb.jpg");
        std::fs::write(&jpeg, &j).unwrap();
        let e = decode_picture(&jpeg).unwrap_err();
        assert!(e.contains("bomb.jpg") && e.contains("8192 x 8192"), "{e}");
        // A PNG of 5000 x 4000 grey pixels: 20 MB of pixels in a file of a few kB.
        let png = dir.join("bomb.png");
        image::GrayImage::new(5000, 4000).save(&png).unwrap();
        assert!(std::fs::metadata(&png).unwrap().len() < 1 << 20);
        let e = decode_picture(&png).unwrap_err();
        assert!(e.contains("bomb.png") && e.contains("5000 x 4000"), "{e}");
        // A device is not read at all.
        let e = decode_picture(Path::new("/dev/zero")).unwrap_err();
        assert!(e.contains("not a file"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn scales_are_one_or_one_per_layer() {
        assert_eq!(parse_scale("0.7").unwrap(), vec![0.7]);
        assert_eq!(parse_scale("0.5, 1,2").unwrap(), vec![0.5, 1.0, 2.0]);
        assert!(parse_scale("3").unwrap_err().contains("\"3\""));
        assert!(parse_scale("").is_err());
        assert!(parse_scale("a").is_err());
        assert_eq!(scale_vector(&[0.5], 3).unwrap(), vec![0.5; 3]);
        assert!(
            scale_vector(&[0.5, 1.0], 3)
                .unwrap_err()
                .contains("3 IP-Adapter layers")
        );
    }

    #[test]
    fn tokens_go_after_the_text_rows_and_before_pooled_rows() {
        let text = [1.0, 1.0, 2.0, 2.0, 9.0, 9.0];
        assert_eq!(
            with_tokens(&text, 2, 2, &[5.0, 5.0]),
            vec![1.0, 1.0, 2.0, 2.0, 5.0, 5.0, 9.0, 9.0]
        );
    }

    #[test]
    fn a_new_picture_fades_and_ends_exactly() {
        let layout = IpLayout {
            tokens: 1,
            width: 2,
            layers: 1,
        };
        let mut ip = IpTokens::new(layout);
        let p = PictureTokens {
            tokens: Arc::new(vec![1.0, 2.0]),
            negative: Arc::new(vec![0.5, 0.5]),
        };
        ip.set(Some(p.clone()), 1, BlendMode::Linear);
        assert_eq!(ip.negative(), &[0.5, 0.5]);
        assert!(ip.step(1));
        assert_eq!(ip.current(), &[0.5, 1.0]);
        assert!(ip.step(1));
        assert_eq!(ip.current(), &[1.0, 2.0]);
        assert!(!ip.step(1));
        ip.set(None, 0, BlendMode::Linear);
        assert_eq!(ip.current(), &[0.0, 0.0]);
    }
}
