// SPDX-License-Identifier: MPL-2.0
//! [`Engine`]: the public face of the diffusion engine.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use ort::memory::Allocator;
use ort::value::Tensor;

use super::conditioning::{Conditioning, emb};
use super::ipadapter::{self, IpLayout, IpTokens, PictureTokens};
use super::lora::AdapterCache;
use super::model::{Images, Model, Text, max_unet_rows};
use super::scheduler::StepConstants;
use super::stream::{Emb, FrameParams, Stream, rows_per_call};
use super::{
    CfgType, DecodedFrame, Embedding, EngineError, ExecutionProvider, InputFrame, LoadOptions,
    Noise, OutputFrame, PreparedFrame, StreamParams, Timings,
};

/// Runs the text encoder on `text` (`negative`: SDXL zeros an empty negative prompt,
/// force_zeros_for_empty_prompt), counting its time; its output must have `shape`.
fn encode_text(
    model: &mut Text,
    timings: &mut Timings,
    shape: [usize; 3],
    text: &str,
    negative: bool,
) -> Result<Vec<f32>, EngineError> {
    let t0 = Instant::now();
    let mut data = Vec::new();
    let got = if negative {
        model.encode_negative(text, &mut data)?
    } else {
        model.encode(text, &mut data)?
    };
    timings.text += t0.elapsed();
    timings.text_calls += 1;
    if got != shape {
        return Err(EngineError::tensor(
            model.file(),
            "last_hidden_state",
            format!("{shape:?}"),
            format!("{got:?}"),
        ));
    }
    Ok(data)
}

/// `v / 255 * 2 - 1` in float32 for every byte (the same bits as numpy's).
const NORMALISE: [f32; 256] = {
    let mut t = [0.0f32; 256];
    let mut v = 0;
    while v < 256 {
        t[v] = (v as f32 / 255.0) * 2.0 - 1.0;
        v += 1;
    }
    t
};

/// Packed RGB8 to planar normalised float32: `v / 255 * 2 - 1`, the same float32
/// operations as [`NORMALISE`], so every path gives the same bits.
fn preprocess(rgb: &[u8], r: &mut [f32], g: &mut [f32], b: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        unsafe { preprocess_avx2(rgb, r, g, b) };
        return;
    }
    preprocess_table(rgb, r, g, b);
}

/// The portable path: a table (with SSE2 only, the stride-3 loads do not vectorise and
/// the table beats arithmetic).
fn preprocess_table(rgb: &[u8], r: &mut [f32], g: &mut [f32], b: &mut [f32]) {
    let t = &NORMALISE;
    for (((px, r), g), b) in rgb.chunks_exact(3).zip(r).zip(g).zip(b) {
        *r = t[px[0] as usize];
        *g = t[px[1] as usize];
        *b = t[px[2] as usize];
    }
}

/// The arithmetic compiled for AVX2, where the compiler vectorises the stride-3 byte
/// loads (shuffles) and the conversion, eight pixels at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn preprocess_avx2(rgb: &[u8], r: &mut [f32], g: &mut [f32], b: &mut [f32]) {
    let n = (rgb.len() / 3).min(r.len()).min(g.len()).min(b.len());
    let (rgb, r, g, b) = (&rgb[..3 * n], &mut r[..n], &mut g[..n], &mut b[..n]);
    let f = |v: u8| (v as f32 / 255.0) * 2.0 - 1.0;
    for i in 0..n {
        r[i] = f(rgb[3 * i]);
        g[i] = f(rgb[3 * i + 1]);
        b[i] = f(rgb[3 * i + 2]);
    }
}

/// Spare image buffers kept for reuse between a [`Preprocessor`] and its engine.
const POOL_BUFFERS: usize = 8;

/// The spare image buffers shared by a [`Preprocessor`], its engine and the frames in
/// between: a frame's buffer comes back when the frame is dropped, wherever that is.
#[derive(Clone, Debug, Default)]
pub(crate) struct BufferPool(Arc<Mutex<Vec<Tensor<f32>>>>);

impl BufferPool {
    /// A spare buffer of `len` floats; one of another size (the model was loaded again at
    /// another size) is dropped.
    fn take(&self, len: usize) -> Option<Tensor<f32>> {
        let pooled = self.0.lock().ok().and_then(|mut p| p.pop());
        pooled.filter(|t| t.extract_tensor().1.len() == len)
    }

    /// Keeps `image` for a later frame (at most [`POOL_BUFFERS`]).
    pub(crate) fn recycle(&self, image: Tensor<f32>) {
        if let Ok(mut p) = self.0.lock()
            && p.len() < POOL_BUFFERS
        {
            p.push(image);
        }
    }
}

/// Turns packed RGB8 frames into [`PreparedFrame`]s for one engine, on any thread (it is
/// `Clone + Send + Sync`): the element preprocesses on its input side, so the thread that
/// runs the model calls does not. Buffers come from a pool that every frame refills when
/// it is dropped (encoded or not), so a steady stream allocates nothing per frame.
#[derive(Clone, Debug)]
pub struct Preprocessor {
    /// Named in the error should a host tensor not be allocated.
    encoder_file: std::path::PathBuf,
    pool: BufferPool,
    /// The model's ControlNets: each frame gets this many control images.
    controlnets: usize,
}

impl Preprocessor {
    fn new(encoder_file: std::path::PathBuf, controlnets: usize) -> Preprocessor {
        Preprocessor {
            encoder_file,
            pool: BufferPool::default(),
            controlnets,
        }
    }

    /// The model's ControlNets (0 for a plain UNet).
    pub fn controlnets(&self) -> usize {
        self.controlnets
    }

    /// Preprocesses one frame of packed RGB8 at the model size `width x height`
    /// (`width * height * 3` bytes); `tag` comes back with the frame's output. The engine
    /// refuses a frame of another size than its own.
    pub fn prepare(
        &self,
        tag: u64,
        rgb: &[u8],
        width: u32,
        height: u32,
    ) -> Result<PreparedFrame, EngineError> {
        let (w, h) = (width as usize, height as usize);
        if rgb.len() != w * h * 3 {
            return Err(EngineError::argument(
                "input frame",
                format!("{w}x{h} packed RGB8 ({} bytes)", w * h * 3),
                format!("{} bytes", rgb.len()),
            ));
        }
        let plane = w * h;
        let mut image = match self.pool.take(3 * plane) {
            Some(t) => t,
            // Host memory ONNX Runtime can bind as it is.
            None => Tensor::<f32>::new(&Allocator::default(), [1, 3, h, w])
                .map_err(|e| EngineError::inference(&self.encoder_file, e))?,
        };
        let (_, data) = image.extract_tensor_mut();
        let (r, rest) = data.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        preprocess(rgb, r, g, b);
        // ControlNet models: the frame itself until the caller sets another image.
        let control = (self.controlnets > 0).then(|| {
            let mut c = vec![0.0f32; self.controlnets * 3 * plane];
            for k in 0..self.controlnets {
                crate::diffusion::control_planes(
                    rgb,
                    plane,
                    &mut c[k * 3 * plane..(k + 1) * 3 * plane],
                );
            }
            c
        });
        Ok(PreparedFrame::new(tag, image, control, self.pool.clone()))
    }
}

/// Whether guidance is active and which negative it needs.
fn effective_cfg(p: &StreamParams) -> CfgType {
    if p.guidance_scale > 1.0 {
        p.cfg_type
    } else {
        CfgType::None
    }
}

fn needs_uncond(cfg: CfgType) -> bool {
    matches!(cfg, CfgType::Full | CfgType::Initialize)
}

/// The error of an IP-Adapter setting on a model without IP-Adapter inputs.
pub(crate) fn not_ip_adapter(unet: &std::path::Path) -> EngineError {
    EngineError::tensor(
        unet,
        ipadapter::SCALE_INPUT,
        "an input of this name (an IP-Adapter model; see docs/models.md, \"IP-Adapter models\")",
        "none",
    )
}

/// A decoded frame's buffer and the `[0, 1]` pixels made from it.
type LastOutput = (DecodedFrame, Arc<Vec<f32>>);

/// A loaded model and the frames in flight.
///
/// `Engine` is `Send` (not `Sync`): create it on any thread, then drive it from one thread
/// at a time; every method that runs a graph takes `&mut self`.
pub struct Engine {
    opts: LoadOptions,
    params: StreamParams,
    model: Model,
    steps: Vec<StepConstants>,
    /// The conditioning and init noise of new frames, their targets and fades.
    conditioning: Conditioning,
    uncond: Option<Arc<Emb>>,
    frame_params: Arc<FrameParams>,
    stream: Stream,
    timings: Timings,
    pre: Preprocessor,
    images: Vec<f32>,
    latents: Vec<f32>,
    order: Vec<Option<usize>>,
    /// The last frame [`Engine::process`] converted (decoded, pixels), so a repeated
    /// (skipped) frame shares its pixels instead of being converted again.
    last_out: Option<LastOutput>,
    /// Temporal feedback for new frames (see [`Engine::set_latent_feedback`]).
    latent_feedback: f32,
    /// One scale per ControlNet for new frames (see [`Engine::set_controlnet_scales`]).
    controlnet_scales: Vec<f32>,
    /// IP-Adapter models: the image tokens and scale (see [`Engine::set_ip_picture`]).
    ip: Option<IpTokens>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("opts", &self.opts)
            .field("params", &self.params)
            .field("provider", &self.model.provider)
            .field("in_flight", &self.stream.pending())
            .finish()
    }
}

impl Engine {
    /// Loads the model directory `opts.model_dir` and prepares the stream for `params`.
    pub fn load(opts: &LoadOptions, params: &StreamParams) -> Result<Engine, EngineError> {
        Self::load_inner(opts, params, None)
    }

    /// [`Engine::load`] with the LoRA files taken from `adapters`, where other threads
    /// read them (see [`Engine::share_adapters`]); a file of `params.lora` not there yet
    /// is read by this call.
    pub fn load_sharing(
        opts: &LoadOptions,
        params: &StreamParams,
        adapters: &AdapterCache,
    ) -> Result<Engine, EngineError> {
        Self::load_inner(opts, params, Some(adapters))
    }

    fn load_inner(
        opts: &LoadOptions,
        params: &StreamParams,
        adapters: Option<&AdapterCache>,
    ) -> Result<Engine, EngineError> {
        let n = params.t_index_list.len().max(1);
        let rows = (
            rows_per_call(
                params.cfg_type,
                params.guidance_scale > 1.0,
                n,
                opts.batch_size.max(1),
            ),
            // Room for live changes up to 4 steps (TensorRT profiles are fixed at load).
            max_unet_rows(n.max(4), opts.batch_size.max(1)),
        );
        let t0 = Instant::now();
        let (mut model, cond_data, cond_shape) = Model::load(opts, rows, &params.prompt)?;
        let text_time = t0.elapsed();
        let steps = model
            .scheduler
            .schedule(&params.t_index_list, params.num_inference_steps)?;
        let (lh, lw) = (opts.height as usize / 8, opts.width as usize / 8);
        let mut timings = Timings::default();
        let conditioning = Conditioning::new(
            params,
            cond_shape,
            cond_data,
            (lh, lw),
            steps.len(),
            &mut |t| encode_text(&mut model.text, &mut timings, cond_shape, t, false),
        )?;
        let encoder_file = model.vae_encoder.graph.file.clone();
        let controlnets = model.unet.control.as_ref().map_or(0, |c| c.count);
        let mut engine = Engine {
            opts: opts.clone(),
            params: params.clone(),
            frame_params: Arc::new(FrameParams {
                steps: steps.clone(),
                noise: conditioning.noise().clone(),
                cond: conditioning.cond().clone(),
                uncond: None,
                cfg: CfgType::None,
                guidance: 1.0,
                delta: 1.0,
                add_noise: true,
                feedback: 0.0,
                control_scales: vec![1.0; controlnets],
            }),
            model,
            steps,
            conditioning,
            uncond: None,
            stream: Stream::default(),
            timings,
            pre: Preprocessor::new(encoder_file, controlnets),
            images: Vec::new(),
            latents: Vec::new(),
            order: Vec::new(),
            last_out: None,
            latent_feedback: 0.0,
            controlnet_scales: vec![1.0; controlnets],
            ip: None,
        };
        engine.ip = engine.model.unet.ip.map(IpTokens::new);
        engine.timings.text += text_time;
        engine.timings.text_calls += 1;
        engine.rebuild_frame_params()?;
        if let Some(a) = adapters {
            engine.share_adapters(a);
        }
        if let (Some(l), Some(u)) = (
            engine.prepare_lora(&params.lora)?,
            engine.model.unet.lora.as_mut(),
        ) {
            u.commit(l, 0);
        }
        Ok(engine)
    }

    /// Reads and checks the LoRA list `text` (`FILE[:SCALE],...`) against the UNet's LoRA
    /// inputs, to be committed with the other settings; `None` for no LoRA on a UNet
    /// without LoRA inputs. A model without them refuses a list naming what is missing.
    fn prepare_lora(&self, text: &str) -> Result<Option<super::lora::Prepared>, EngineError> {
        let list = super::lora::parse_list(text)
            .map_err(|e| EngineError::argument("lora", "FILE[:SCALE][,FILE[:SCALE]...]", e))?;
        match &self.model.unet.lora {
            Some(l) => l.prepare(&list).map(Some),
            None if list.is_empty() => Ok(None),
            None => Err(EngineError::tensor(
                &self.model.unet.graph.file,
                "NAME.lora_A.weight",
                "LoRA inputs (NAME.lora_A.weight [in, r] and NAME.lora_B.weight [r, out], docs/models.md \"LoRA models\") for lora",
                "a UNet without LoRA inputs: unset lora or use a model exported with them (scripts/export_lora.py)",
            )),
        }
    }

    /// From now on the LoRA files come from `adapters`, read and parsed there by other
    /// threads ([`AdapterCache::load`]): [`Engine::set_params`] then never reads a file,
    /// and a switch to files not in memory yet waits (see [`Engine::lora_ready`]).
    pub fn share_adapters(&mut self, adapters: &AdapterCache) {
        if let Some(l) = self.model.unet.lora.as_mut() {
            l.share_adapters(adapters);
        }
    }

    /// Whether the files of the LoRA list `text` are in memory, so that
    /// [`Engine::set_params`] binds them without reading; with shared adapters those that
    /// are not are handed to a loader thread, to be asked again at a later call. Always
    /// true without shared adapters (`set_params` reads them) and for a list it refuses.
    pub fn lora_ready(&self, text: &str) -> bool {
        match (super::lora::parse_list(text), &self.model.unet.lora) {
            (Ok(list), Some(l)) => l.ready(&list),
            _ => true,
        }
    }

    /// The number of UNet projections with LoRA inputs (0: the model takes no LoRA).
    pub fn lora_projections(&self) -> usize {
        self.model.unet.lora.as_ref().map_or(0, |l| l.projections())
    }

    /// The execution provider actually running (never `Auto`).
    pub fn provider(&self) -> ExecutionProvider {
        self.model.provider
    }

    pub fn options(&self) -> &LoadOptions {
        &self.opts
    }

    pub fn params(&self) -> &StreamParams {
        &self.params
    }

    /// The VAE scaling factor in use (from vae_decoder/config.json).
    pub fn scaling_factor(&self) -> f32 {
        self.model.scaling_factor
    }

    /// Frames come out as their final latents (the VAE decoder's input, `[1, 4, h/8, w/8]`
    /// float32, already divided by the scaling factor) instead of decoded pictures: the
    /// [`DecodedFrame`]s then hold latents, which [`super::model::VaeDecoder`] decodes
    /// elsewhere (`i2itransform output=latent ! i2idecode`).
    pub fn set_latent_output(&mut self, on: bool) {
        self.stream.latent_output = on;
    }

    /// Applies new stream settings to the frames entering from the next call on (frames in
    /// flight finish with the settings they entered with). The conditioning and the noise
    /// jump to what the settings ask, or fade over `transition_frames` (see
    /// [`super::conditioning`]); the text encoder runs only for a prompt not encoded yet.
    /// On error nothing changes.
    pub fn set_params(&mut self, p: &StreamParams) -> Result<(), EngineError> {
        if *p == self.params {
            return Ok(());
        }
        let steps = if p.t_index_list != self.params.t_index_list
            || p.num_inference_steps != self.params.num_inference_steps
        {
            self.model
                .scheduler
                .schedule(&p.t_index_list, p.num_inference_steps)?
        } else {
            self.steps.clone()
        };
        let lora = if p.lora != self.params.lora {
            self.prepare_lora(&p.lora)?
        } else {
            None
        };
        let shape = self.conditioning.shape();
        let negative_changed = p.negative_prompt != self.params.negative_prompt;
        let uncond =
            if needs_uncond(effective_cfg(p)) && (negative_changed || self.uncond.is_none()) {
                Some(self.encode_as(&p.negative_prompt, true)?)
            } else {
                None
            };
        let (text, timings) = (&mut self.model.text, &mut self.timings);
        self.conditioning.set(p, steps.len(), &mut |t| {
            encode_text(text, timings, shape, t, false)
        })?;
        // Commit.
        if let (Some(l), Some(u)) = (lora, self.model.unet.lora.as_mut()) {
            u.commit(l, p.transition_frames);
        }
        if uncond.is_some() || negative_changed {
            // A stale negative is encoded again when a mode needs it.
            self.uncond = uncond;
        }
        self.steps = steps;
        self.params = p.clone();
        self.rebuild_frame_params()
    }

    /// The encoding of `text` as a new conditioning value (`negative`: see
    /// [`encode_text`]).
    fn encode_as(&mut self, text: &str, negative: bool) -> Result<Arc<Emb>, EngineError> {
        let shape = self.conditioning.shape();
        let data = encode_text(
            &mut self.model.text,
            &mut self.timings,
            shape,
            text,
            negative,
        )?;
        Ok(emb(shape, data))
    }

    fn rebuild_frame_params(&mut self) -> Result<(), EngineError> {
        let cfg = effective_cfg(&self.params);
        if needs_uncond(cfg) && self.uncond.is_none() {
            let u = self.encode_as(&self.params.negative_prompt.clone(), true)?;
            self.uncond = Some(u);
        }
        let uncond = if needs_uncond(cfg) {
            self.uncond.clone()
        } else {
            None
        };
        let (cond, uncond) = self.with_image_tokens(self.conditioning.cond(), uncond);
        self.frame_params = Arc::new(FrameParams {
            steps: self.steps.clone(),
            noise: self.conditioning.noise().clone(),
            cond,
            uncond,
            cfg,
            guidance: self.params.guidance_scale,
            delta: self.params.delta,
            add_noise: self.params.add_noise,
            feedback: self.latent_feedback,
            control_scales: self.controlnet_scales.clone(),
        });
        Ok(())
    }

    /// The text rows with the IP-Adapter's image tokens after them (the positive ones on
    /// `cond`, the negative ones on `uncond`); as they are for other models.
    fn with_image_tokens(
        &self,
        cond: &Arc<Emb>,
        uncond: Option<Arc<Emb>>,
    ) -> (Arc<Emb>, Option<Arc<Emb>>) {
        let Some(ip) = &self.ip else {
            return (cond.clone(), uncond);
        };
        let [_, rows, e] = cond.shape;
        let text_rows = rows - super::sdxl::pooled_rows(self.model.unet.pooled_size, e);
        let shape = [1, rows + ip.layout.tokens, e];
        let join = |text: &Emb, tokens: &[f32]| {
            emb(
                shape,
                ipadapter::with_tokens(&text.data, text_rows, e, tokens),
            )
        };
        (
            join(cond, ip.current()),
            uncond.map(|u| join(&u, ip.negative())),
        )
    }

    /// The IP-Adapter layout of the UNet (`None`: not an IP-Adapter model).
    pub fn ip_layout(&self) -> Option<IpLayout> {
        self.ip.as_ref().map(|ip| ip.layout)
    }

    /// The IP-Adapter picture of the frames entering from the next call on (`None`: none,
    /// zero tokens), faded in over `transition_frames` as prompts are. The tokens come
    /// from an [`ipadapter::ImageSide`] on another thread.
    pub fn set_ip_picture(&mut self, p: Option<PictureTokens>) -> Result<(), EngineError> {
        self.set_ip_picture_over(p, self.params.transition_frames)
    }

    /// [`Engine::set_ip_picture`] without a fade: an engine loaded again in place of
    /// another takes up its picture at once.
    pub fn set_ip_picture_now(&mut self, p: Option<PictureTokens>) -> Result<(), EngineError> {
        self.set_ip_picture_over(p, 0)
    }

    fn set_ip_picture_over(
        &mut self,
        p: Option<PictureTokens>,
        frames: u32,
    ) -> Result<(), EngineError> {
        let mode = self.params.blend_mode;
        let Some(ip) = self.ip.as_mut() else {
            return Err(not_ip_adapter(&self.model.unet.graph.file));
        };
        let n = ip.layout.tokens * ip.layout.width;
        if let Some(t) = &p
            && (t.tokens.len() != n || t.negative.len() != n)
        {
            return Err(EngineError::argument(
                "IP-Adapter tokens",
                format!("{n} values ({} x {})", ip.layout.tokens, ip.layout.width),
                format!("{} and {}", t.tokens.len(), t.negative.len()),
            ));
        }
        let before = ip.generation;
        ip.set(p, frames, mode);
        if ip.generation != before {
            self.rebuild_frame_params()?;
        }
        Ok(())
    }

    /// `ipadapter_scale` from one value or one per layer, bound from the next UNet run on.
    pub fn set_ip_scale(&mut self, scale: &[f32]) -> Result<(), EngineError> {
        let file = self.model.unet.graph.file.clone();
        let Some(l) = self.model.unet.ip.map(|l| l.layers) else {
            return Err(not_ip_adapter(&file));
        };
        self.model.unet.ip_scale = ipadapter::scale_vector(scale, l).map_err(|e| {
            EngineError::argument("ip-adapter-scale", "one value or one per layer", e)
        })?;
        Ok(())
    }

    /// A preprocessor for this engine's frames, to run on another thread than the one
    /// that calls [`Engine::process_prepared`].
    pub fn preprocessor(&self) -> Preprocessor {
        self.pre.clone()
    }

    /// Takes `pre` (and its buffer pool) as its own preprocessor: an engine loaded again in
    /// place of another, fed by the same input side. (A frame's buffer always goes back to
    /// the pool of the preprocessor that made it.)
    pub fn share_preprocessor(&mut self, pre: &Preprocessor) {
        self.pre = pre.clone();
    }

    /// Feeds 1..=batch_size frames (packed RGB8 at the model size); returns the frames that
    /// completed, in input order: none until the pipeline is warm (n - 1 calls), then the
    /// frames that entered n - 1 calls ago. Preprocesses, runs [`Engine::process_prepared`]
    /// and turns the decoded frames into `[0, 1]` pixels, all on the calling thread.
    pub fn process(&mut self, frames: Vec<InputFrame>) -> Result<Vec<OutputFrame>, EngineError> {
        self.check_count(frames.len())?;
        let t0 = Instant::now();
        let prepared = frames
            .iter()
            .map(|f| {
                self.pre
                    .prepare(f.tag, &f.rgb, self.opts.width, self.opts.height)
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.timings.preprocess += t0.elapsed();
        let decoded = self.process_prepared(prepared)?;
        Ok(self.finish(decoded))
    }

    /// Decoded frames to `[0, 1]` pixels; a repeated frame shares the pixels of the frame
    /// it repeats.
    fn finish(&mut self, decoded: Vec<DecodedFrame>) -> Vec<OutputFrame> {
        let t0 = Instant::now();
        let mut out = Vec::with_capacity(decoded.len());
        for d in decoded {
            let pixels = match &self.last_out {
                Some((dec, px)) if dec.same_output(&d) => px.clone(),
                _ => {
                    let mut px = Vec::new();
                    d.pixels(&mut px);
                    let px = Arc::new(px);
                    self.last_out = Some((d.clone(), px.clone()));
                    px
                }
            };
            out.push(OutputFrame {
                tag: d.tag,
                pixels,
                skipped: d.skipped,
            });
        }
        self.timings.postprocess += t0.elapsed();
        out
    }

    fn check_count(&self, n: usize) -> Result<(), EngineError> {
        if n > self.opts.batch_size {
            return Err(EngineError::argument(
                "frames per process call",
                format!("1 to batch-size ({})", self.opts.batch_size),
                n.to_string(),
            ));
        }
        Ok(())
    }

    /// The model calls for 1..=batch_size frames prepared by [`Engine::preprocessor`]:
    /// the similarity filter, the VAE encoder, one UNet step for every frame in flight and
    /// the decoder for the frames that finish. Returns the frames that completed, in input
    /// order, still in the decoder's range (see [`DecodedFrame`]).
    pub fn process_prepared(
        &mut self,
        frames: Vec<PreparedFrame>,
    ) -> Result<Vec<DecodedFrame>, EngineError> {
        let mut out = Vec::new();
        if frames.is_empty() {
            return Ok(out);
        }
        self.check_count(frames.len())?;
        let (w, h) = (self.opts.width as usize, self.opts.height as usize);
        let img = 3 * w * h;
        if let Some(f) = frames.iter().find(|f| f.data().len() != img) {
            return Err(EngineError::argument(
                "prepared frame",
                format!("{w}x{h} (3 x {} floats)", w * h),
                format!(
                    "{} floats (from another engine's preprocessor?)",
                    f.data().len()
                ),
            ));
        }
        let num = self.controlnets();
        if let Some(f) = frames.iter().find(|f| f.controlnets() != num) {
            return Err(EngineError::argument(
                "prepared frame",
                format!("{num} control image(s) (the model's ControlNets)"),
                format!("{} (from another engine's preprocessor?)", f.controlnets()),
            ));
        }
        // The frames of this call take one step of the conditioning and noise fades.
        let ip_moved = self.ip.as_mut().is_some_and(|ip| ip.step(frames.len()));
        if self.conditioning.step(frames.len()) | ip_moved {
            self.rebuild_frame_params()?;
        }
        if let Some(l) = self.model.unet.lora.as_mut() {
            l.step(frames.len());
        }
        self.timings.frames_in += frames.len() as u64;

        // The similarity filter. It processes the first frame it sees (its reference), so
        // a skipped frame always has a processed frame before it to repeat.
        let t0 = Instant::now();
        let filter_on = self.params.similarity_threshold > 0.0;
        self.order.clear();
        let mut kept = 0;
        for f in &frames {
            let skip = filter_on
                && self.stream.filter.skip(
                    f.data(),
                    self.params.similarity_threshold,
                    self.params.max_skip_frames,
                    self.params.seed,
                );
            if skip {
                self.order.push(None);
            } else {
                self.order.push(Some(kept));
                kept += 1;
            }
        }
        self.timings.preprocess += t0.elapsed();

        // Encode the new frames in one call: a single frame straight from its buffer, more
        // than one gathered into one batch.
        let lat = 4 * (h / 8) * (w / 8);
        if kept > 0 {
            let t0 = Instant::now();
            let images = if kept == 1 {
                let k = self.order.iter().position(Option::is_some).unwrap_or(0);
                Images::One(frames[k].image())
            } else {
                self.images.clear();
                for (f, o) in frames.iter().zip(&self.order) {
                    if o.is_some() {
                        self.images.extend_from_slice(f.data());
                    }
                }
                Images::Rows(&self.images)
            };
            let calls = self
                .model
                .vae_encoder
                .encode(images, kept, &mut self.latents)?;
            self.timings.vae_encode += t0.elapsed();
            self.timings.vae_encode_calls += calls as u64;
        }
        let sf = self.model.scaling_factor;
        // Each frame's buffer goes back to the pool as the frame is dropped here.
        for (mut f, o) in frames.into_iter().zip(&self.order) {
            match o {
                Some(k) => self.stream.push_frame(
                    f.tag,
                    &self.latents[k * lat..(k + 1) * lat],
                    sf,
                    f.control.take(),
                    self.frame_params.clone(),
                ),
                None => {
                    self.timings.frames_skipped += 1;
                    self.stream.push_skip(f.tag);
                }
            }
        }
        // Frames in flight move on even when every new frame was skipped, so skipped
        // frames are not held behind a stalled pipeline.
        self.stream.advance(&mut self.model, &mut self.timings)?;
        self.stream.collect(&mut out);
        self.timings.frames_out += out.len() as u64;
        Ok(out)
    }

    /// Runs the remaining steps of every frame in flight and returns all waiting frames in
    /// order (every frame given to `process` comes out exactly once).
    pub fn drain(&mut self) -> Result<Vec<OutputFrame>, EngineError> {
        let decoded = self.drain_decoded()?;
        Ok(self.finish(decoded))
    }

    /// [`Engine::drain`] for callers of [`Engine::process_prepared`]: the frames come out
    /// in the decoder's range.
    pub fn drain_decoded(&mut self) -> Result<Vec<DecodedFrame>, EngineError> {
        let mut out = Vec::new();
        while self.stream.flights() > 0 {
            self.stream.advance(&mut self.model, &mut self.timings)?;
            self.stream.collect(&mut out);
        }
        self.stream.collect(&mut out);
        self.timings.frames_out += out.len() as u64;
        Ok(out)
    }

    /// Forgets the frames in flight (flush) and the similarity filter's reference.
    pub fn reset(&mut self) {
        self.stream.reset();
        self.last_out = None;
    }

    /// Frames given to `process` that have not come out yet.
    pub fn in_flight(&self) -> usize {
        self.stream.pending()
    }

    /// Number of denoising steps `n` for new frames.
    pub fn steps(&self) -> usize {
        self.steps.len()
    }

    /// How many frames a frame waits behind before it comes out: `(n - 1) * batch_size`.
    pub fn latency_frames(&self) -> usize {
        self.steps().saturating_sub(1) * self.opts.batch_size
    }

    /// Runs the tokenizer and text encoder on `text`: `[1, 77, E]`.
    pub fn encode_prompt(&mut self, text: &str) -> Result<Embedding, EngineError> {
        let shape = self.conditioning.shape();
        let data = encode_text(&mut self.model.text, &mut self.timings, shape, text, false)?;
        Ok(Embedding { shape, data })
    }

    /// The init noise for `seed` at this engine's shape `[n, 4, h, w]`.
    pub fn noise_for_seed(&self, seed: u64) -> Noise {
        self.conditioning.noise_for_seed(seed, self.steps())
    }

    /// Temporal feedback against flicker for the frames entering from the next call on:
    /// each frame's initial latent becomes `(1 - s) * z_in + s * z_prev`, `z_prev` being
    /// the final latent of the newest frame out when it enters (see
    /// [`stream::Stream::push_frame`](super::stream::Stream::push_frame)). Clamped to
    /// `[0, 1]`; 0 (the default) is off and gives the same bits as without it. A reset
    /// forgets `z_prev`.
    pub fn set_latent_feedback(&mut self, s: f32) {
        let s = if s.is_finite() {
            s.clamp(0.0, 1.0)
        } else {
            0.0
        };
        if s != self.latent_feedback {
            self.latent_feedback = s;
            let _ = self.rebuild_frame_params();
        }
    }

    pub fn latent_feedback(&self) -> f32 {
        self.latent_feedback
    }

    /// The model's ControlNets (a fused UNet + ControlNet graph); 0 for a plain UNet.
    pub fn controlnets(&self) -> usize {
        self.controlnet_scales.len()
    }

    pub fn controlnet_scales(&self) -> &[f32] {
        &self.controlnet_scales
    }

    /// The ControlNets' conditioning scales for the frames entering from the next call
    /// on: one per ControlNet, or one for all; 0 turns a ControlNet off (its residuals
    /// are multiplied by 0 inside the graph) without a reload. Refused, changing nothing,
    /// for another count, a model without ControlNets, or a value that is not finite.
    pub fn set_controlnet_scales(&mut self, scales: &[f32]) -> Result<(), EngineError> {
        let num = self.controlnets();
        let file = self.model.unet.graph.file.clone();
        if num == 0 {
            return Err(EngineError::tensor(
                &file,
                "controlnet_images",
                "a fused UNet + ControlNet graph for controlnet scales",
                "a UNet without ControlNet inputs",
            ));
        }
        let values = match scales.len() {
            1 => vec![scales[0]; num],
            n if n == num => scales.to_vec(),
            n => {
                return Err(EngineError::tensor(
                    &file,
                    "controlnet_scales",
                    format!("{num} scale(s), one per ControlNet in the graph (or one for all)"),
                    format!("{n} scales"),
                ));
            }
        };
        if let Some(v) = values.iter().find(|v| !v.is_finite()) {
            return Err(EngineError::argument(
                "controlnet scale",
                "a finite number",
                v.to_string(),
            ));
        }
        if values != self.controlnet_scales {
            self.controlnet_scales = values;
            self.rebuild_frame_params()?;
        }
        Ok(())
    }

    /// [`Engine::process`] with control images: `controls[i]` holds frame `i`'s image for
    /// each ControlNet, packed RGB8 at the model size one after the other (`num * W * H *
    /// 3` bytes); an empty vector keeps the frame itself as every control image.
    pub fn process_controlled(
        &mut self,
        frames: Vec<InputFrame>,
        controls: Vec<Vec<u8>>,
    ) -> Result<Vec<OutputFrame>, EngineError> {
        self.check_count(frames.len())?;
        let img = 3 * self.opts.width as usize * self.opts.height as usize;
        let mut prepared = Vec::with_capacity(frames.len());
        for (k, f) in frames.iter().enumerate() {
            let mut p = self
                .pre
                .prepare(f.tag, &f.rgb, self.opts.width, self.opts.height)?;
            if let Some(c) = controls.get(k).filter(|c| !c.is_empty()) {
                if c.len() != self.controlnets() * img {
                    return Err(EngineError::argument(
                        "control images",
                        format!(
                            "{} x {img} bytes (one RGB8 image per ControlNet)",
                            self.controlnets()
                        ),
                        format!("{} bytes", c.len()),
                    ));
                }
                for (i, one) in c.chunks_exact(img).enumerate() {
                    p.set_control_rgb8(i, one)?;
                }
            }
            prepared.push(p);
        }
        let decoded = self.process_prepared(prepared)?;
        Ok(self.finish(decoded))
    }

    /// Cumulative time per stage and call counts.
    pub fn timings(&self) -> Timings {
        self.timings.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path gives the table's bits, for every byte value in every channel.
    #[test]
    fn preprocess_paths_agree_bit_for_bit() {
        let n = 256 * 3 + 7;
        let rgb: Vec<u8> = (0..3 * n).map(|i| ((i * 7 + i / 3) % 256) as u8).collect();
        let mut a = vec![0.0f32; 3 * n];
        let mut t = vec![0.0f32; 3 * n];
        {
            let (r, rest) = a.split_at_mut(n);
            let (g, b) = rest.split_at_mut(n);
            preprocess(&rgb, r, g, b);
        }
        {
            let (r, rest) = t.split_at_mut(n);
            let (g, b) = rest.split_at_mut(n);
            preprocess_table(&rgb, r, g, b);
        }
        for (i, (x, y)) in a.iter().zip(&t).enumerate() {
            assert_eq!(x.to_bits(), y.to_bits(), "element {i}");
        }
        for v in 0..=255u8 {
            let expected = (v as f64 / 255.0 * 2.0 - 1.0) as f32;
            assert!((NORMALISE[v as usize] - expected).abs() <= f32::EPSILON);
        }
        assert_eq!(NORMALISE[0], -1.0);
        assert_eq!(NORMALISE[255], 1.0);
    }
}
