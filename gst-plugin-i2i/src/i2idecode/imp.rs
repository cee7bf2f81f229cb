// SPDX-License-Identifier: MPL-2.0
//! The `i2idecode` element: checks each latent frame against its caps, runs the VAE decoder
//! on the streaming thread (the decoder is the element's only work) and pushes the picture
//! converted to the negotiated format, with the input's timestamps, flags and metas.
//!
//! The decoder is loaded when the first caps arrive (their `image-width` x `image-height`)
//! and again when the size changes. A frame whose payload does not match the caps is
//! dropped with a warning and counted; the stream goes on.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use ort::value::Tensor;

use crate::diffusion::model::{VaeDecoder, read_scaling_factor};
use crate::diffusion::{LoadOptions, decoded_to_rgb8};
use crate::i2itransform::{ExecutionProvider, LATENT_CAPS_NAME};
use crate::infer::convert::{OutputConverter, SRC_FORMATS, converter_threads};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "i2idecode",
        gst::DebugColorFlags::empty(),
        Some("VAE decoder for latent frames"),
    )
});

const DEFAULT_THREADS: u32 = 0;
const DEFAULT_FP16: bool = true;
/// Largest latent width or height taken (8192 pixels).
const MAX_LATENT: usize = 1024;
/// Warnings about bad frames: at most one per this interval (the rest are counted).
const WARN_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Default)]
struct Settings {
    model: Option<String>,
    execution_provider: ExecutionProvider,
    device_id: i32,
    fp16: bool,
    threads: u32,
}

/// What the caps say about each latent frame.
#[derive(Debug, Clone, Copy, PartialEq)]
struct LatentFormat {
    channels: usize,
    width: usize,
    height: usize,
    image_width: u32,
    image_height: u32,
}

impl LatentFormat {
    fn bytes(&self) -> usize {
        self.channels * self.width * self.height * 4
    }
}

fn parse_caps(caps: &gst::CapsRef) -> Result<(LatentFormat, Option<f64>, gst::Fraction), String> {
    let s = caps
        .structure(0)
        .filter(|s| s.name() == LATENT_CAPS_NAME)
        .ok_or_else(|| format!("caps {caps} are not {LATENT_CAPS_NAME}"))?;
    let int = |f: &str| -> Result<i32, String> {
        s.get::<i32>(f)
            .map_err(|_| format!("latent caps {caps} lack the integer field {f}"))
    };
    let dtype = s.get::<&str>("dtype").unwrap_or("float32");
    if dtype != "float32" {
        return Err(format!(
            "latent caps dtype {dtype} refused: i2idecode takes float32 latents"
        ));
    }
    let f = LatentFormat {
        channels: int("channels")?.max(0) as usize,
        width: int("width")?.max(0) as usize,
        height: int("height")?.max(0) as usize,
        image_width: s
            .get::<i32>("image-width")
            .unwrap_or(int("width")? * 8)
            .max(0) as u32,
        image_height: s
            .get::<i32>("image-height")
            .unwrap_or(int("height")? * 8)
            .max(0) as u32,
    };
    if f.channels != 4 {
        return Err(format!(
            "latent caps with {} channels refused: the VAE decoder takes 4",
            f.channels
        ));
    }
    if f.width == 0
        || f.height == 0
        || f.width > MAX_LATENT
        || f.height > MAX_LATENT
        || f.image_width as usize != 8 * f.width
        || f.image_height as usize != 8 * f.height
    {
        return Err(format!(
            "latent caps {caps} refused: width and height must be 1..={MAX_LATENT} and image-width x image-height 8 x width x height"
        ));
    }
    let fps = s
        .get::<gst::Fraction>("framerate")
        .unwrap_or(gst::Fraction::new(0, 1));
    Ok((f, s.get::<f64>("scaling-factor").ok(), fps))
}

struct State {
    decoder: Option<VaeDecoder>,
    format: Option<LatentFormat>,
    conv: Option<OutputConverter>,
    /// The decoder's output tensor, reused frame to frame.
    slot: [Option<Arc<Tensor<f32>>>; 1],
    latents: Vec<f32>,
    last_warning: Option<Instant>,
}

#[derive(Default)]
struct Stats {
    frames_in: u64,
    frames_out: u64,
    frames_invalid: u64,
    decode_total: Duration,
}

pub struct I2iDecode {
    sinkpad: gst::Pad,
    srcpad: gst::Pad,
    settings: Mutex<Settings>,
    state: Mutex<State>,
    stats: Mutex<Stats>,
    running: AtomicBool,
}

#[glib::object_subclass]
impl ObjectSubclass for I2iDecode {
    const NAME: &'static str = "GstI2iDecode";
    type Type = super::I2iDecode;
    type ParentType = gst::Element;

    fn with_class(klass: &Self::Class) -> Self {
        let sinkpad = gst::Pad::builder_from_template(&klass.pad_template("sink").unwrap())
            .chain_function(|_pad, parent, buffer| {
                I2iDecode::catch_panic_pad_function(
                    parent,
                    || Err(gst::FlowError::Error),
                    |imp| imp.chain(buffer),
                )
            })
            .event_function(|pad, parent, event| {
                I2iDecode::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.sink_event(pad, event),
                )
            })
            .flags(gst::PadFlags::PROXY_ALLOCATION)
            .build();
        let srcpad = gst::Pad::builder_from_template(&klass.pad_template("src").unwrap()).build();
        I2iDecode {
            sinkpad,
            srcpad,
            settings: Mutex::new(Settings {
                fp16: DEFAULT_FP16,
                threads: DEFAULT_THREADS,
                ..Default::default()
            }),
            state: Mutex::new(State {
                decoder: None,
                format: None,
                conv: None,
                slot: [None],
                latents: Vec::new(),
                last_warning: None,
            }),
            stats: Mutex::new(Stats::default()),
            running: AtomicBool::new(false),
        }
    }
}

impl I2iDecode {
    fn sink_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        if let gst::EventView::Caps(c) = event.view() {
            return match self.set_caps(c.caps()) {
                Ok(out) => self.srcpad.push_event(gst::event::Caps::new(&out)),
                Err(e) => {
                    gst::element_imp_error!(
                        self,
                        gst::CoreError::Negotiation,
                        ["Cannot negotiate: {}", e]
                    );
                    false
                }
            };
        }
        if let gst::EventView::Eos(_) = event.view() {
            self.post_stats();
        }
        gst::Pad::event_default(pad, Some(&*self.obj()), event)
    }

    /// Checks the latent caps, loads the decoder for their size and negotiates the output.
    fn set_caps(&self, caps: &gst::CapsRef) -> Result<gst::Caps, String> {
        let (f, sf, fps) = parse_caps(caps)?;
        let s = self.settings.lock().unwrap().clone();
        let model = s.model.clone().unwrap_or_default();
        if let (Some(sf), Ok(ours)) = (sf, read_scaling_factor(&PathBuf::from(&model)))
            && (sf - ours as f64).abs() > 1e-6
        {
            gst::element_imp_warning!(
                self,
                gst::StreamError::Format,
                (
                    "The latents come from a model with VAE scaling factor {}, {} has {}: is it the same model?",
                    sf,
                    model,
                    ours
                )
            );
        }
        let mut st = self.state.lock().unwrap();
        let reload = st.format.is_none_or(|old| {
            (old.image_width, old.image_height) != (f.image_width, f.image_height)
        });
        if reload || st.decoder.is_none() {
            let threads = if s.threads == 0 {
                std::thread::available_parallelism().map_or(1, |n| n.get())
            } else {
                s.threads as usize
            };
            let opts = LoadOptions {
                model_dir: PathBuf::from(&model),
                width: f.image_width,
                height: f.image_height,
                batch_size: 1,
                execution_provider: s.execution_provider.into(),
                device_id: s.device_id,
                fp16: s.fp16,
                engine_cache_dir: None,
                intra_threads: threads,
            };
            let started = Instant::now();
            let d = VaeDecoder::load(&opts).map_err(|e| {
                format!(
                    "could not load the VAE decoder of {model} at {}x{}: {e}",
                    f.image_width, f.image_height
                )
            })?;
            gst::info!(
                CAT,
                imp = self,
                "decoder of {model} loaded in {:?}",
                started.elapsed()
            );
            st.decoder = Some(d);
            st.slot = [None];
        }
        st.format = Some(f);
        let ours = gst::Caps::builder("video/x-raw")
            .field("format", gst::List::new(SRC_FORMATS))
            .field("width", f.image_width as i32)
            .field("height", f.image_height as i32)
            .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
            .field("framerate", fps)
            .build();
        let peer = self.srcpad.peer_query_caps(None);
        let mut out = peer.intersect_with_mode(&ours, gst::CapsIntersectMode::First);
        if out.is_empty() {
            return Err(format!(
                "downstream accepts none of {ours}; it accepts {peer}"
            ));
        }
        out.fixate();
        let info = gst_video::VideoInfo::from_caps(&out).map_err(|e| e.to_string())?;
        st.conv = Some(OutputConverter::new(&info, converter_threads())?);
        Ok(out)
    }

    /// A frame that does not fit its caps: a rate-limited warning, counted, dropped.
    fn bad_frame(&self, st: &mut State, what: String) -> Result<gst::FlowSuccess, gst::FlowError> {
        let n = {
            let mut s = self.stats.lock().unwrap();
            s.frames_invalid += 1;
            s.frames_invalid
        };
        if st.last_warning.is_none_or(|t| t.elapsed() >= WARN_INTERVAL) {
            st.last_warning = Some(Instant::now());
            gst::element_imp_warning!(
                self,
                gst::StreamError::Decode,
                (
                    "Dropping a latent frame: {} ({} dropped so far, see stats frames-invalid)",
                    what,
                    n
                )
            );
        }
        Ok(gst::FlowSuccess::Ok)
    }

    fn chain(&self, buffer: gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        self.stats.lock().unwrap().frames_in += 1;
        let mut st = self.state.lock().unwrap();
        let Some(f) = st.format else {
            gst::element_imp_error!(
                self,
                gst::CoreError::Negotiation,
                ["Received a latent frame before any caps"]
            );
            return Err(gst::FlowError::NotNegotiated);
        };
        let Ok(map) = buffer.map_readable() else {
            return self.bad_frame(&mut st, "the buffer cannot be read".into());
        };
        if map.len() != f.bytes() {
            let what = format!(
                "{} bytes (pts {:?}) where the caps say float32 [1, {}, {}, {}] = {} bytes (truncated or another model's latents)",
                map.len(),
                buffer.pts(),
                f.channels,
                f.height,
                f.width,
                f.bytes()
            );
            drop(map);
            return self.bad_frame(&mut st, what);
        }
        let State {
            decoder,
            conv,
            slot,
            latents,
            ..
        } = &mut *st;
        latents.clear();
        latents.extend(
            map.chunks_exact(4)
                .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
        );
        drop(map);
        let (Some(decoder), Some(conv)) = (decoder.as_mut(), conv.as_ref()) else {
            return Err(gst::FlowError::NotNegotiated);
        };
        let started = Instant::now();
        decoder.decode(latents, 1, slot).map_err(|e| {
            gst::element_imp_error!(
                self,
                gst::StreamError::Failed,
                ("Decoding failed: {}", e),
                ["The VAE decoder call failed"]
            );
            gst::FlowError::Error
        })?;
        let took = started.elapsed();
        let Some(t) = slot[0].as_ref() else {
            return Err(gst::FlowError::Error);
        };
        let mut rgb = Vec::new();
        decoded_to_rgb8(
            t.extract_tensor().1,
            f.image_width,
            f.image_height,
            &mut rgb,
        );
        let mut out = conv.convert(rgb).map_err(|e| {
            gst::element_imp_error!(self, gst::StreamError::Failed, ["{}", e]);
            gst::FlowError::Error
        })?;
        drop(st);
        {
            let copy = gst::BufferCopyFlags::FLAGS
                | gst::BufferCopyFlags::TIMESTAMPS
                | gst::BufferCopyFlags::META;
            let o = out.get_mut().expect("new buffer is writable");
            if let Err(e) = buffer.copy_into(o, copy, ..) {
                gst::warning!(CAT, imp = self, "cannot copy metadata: {e}");
            }
        }
        {
            let mut s = self.stats.lock().unwrap();
            s.frames_out += 1;
            s.decode_total += took;
        }
        self.srcpad.push(out)
    }

    fn stats_structure(&self) -> gst::Structure {
        let s = self.stats.lock().unwrap();
        let avg = if s.frames_out > 0 {
            s.decode_total.as_secs_f64() * 1000.0 / s.frames_out as f64
        } else {
            0.0
        };
        gst::Structure::builder("i2idecode-stats")
            .field("frames-in", s.frames_in)
            .field("frames-out", s.frames_out)
            .field("frames-invalid", s.frames_invalid)
            .field("avg-decode-ms", avg)
            .build()
    }

    fn post_stats(&self) {
        let msg = gst::message::Element::builder(self.stats_structure())
            .src(&*self.obj())
            .build();
        let _ = self.obj().post_message(msg);
    }
}

impl ObjectImpl for I2iDecode {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("model")
                    .nick("Model directory")
                    .blurb("The model directory the latents come from (its vae_decoder/model.onnx and config.json are used)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("execution-provider", ExecutionProvider::Auto)
                    .nick("Execution provider")
                    .blurb("ONNX Runtime execution provider; naming an unavailable one is an error")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecInt::builder("device-id")
                    .nick("Device ID")
                    .blurb("GPU index for CUDA / TensorRT")
                    .minimum(0)
                    .maximum(255)
                    .default_value(0)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("fp16")
                    .nick("FP16")
                    .blurb("Half precision where the provider supports it (TensorRT)")
                    .default_value(DEFAULT_FP16)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("threads")
                    .nick("Threads")
                    .blurb("ONNX Runtime intra-op threads; 0 = the CPUs this process may use")
                    .maximum(1024)
                    .default_value(DEFAULT_THREADS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("frames-in, frames-out, frames-invalid (payload not matching the caps), avg-decode-ms; also posted as i2idecode-stats at EOS")
                    .read_only()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let name = pspec.name();
        if self.running.load(Ordering::SeqCst) {
            gst::element_imp_warning!(
                self,
                gst::LibraryError::Settings,
                (
                    "{} refused while the stream runs: set it in the NULL or READY state",
                    name
                )
            );
            return;
        }
        let mut s = self.settings.lock().unwrap();
        match name {
            "model" => s.model = value.get().unwrap(),
            "execution-provider" => s.execution_provider = value.get().unwrap(),
            "device-id" => s.device_id = value.get().unwrap(),
            "fp16" => s.fp16 = value.get().unwrap(),
            "threads" => s.threads = value.get().unwrap(),
            _ => unreachable!("property {name} is not registered"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = self.settings.lock().unwrap();
        match pspec.name() {
            "model" => s.model.to_value(),
            "execution-provider" => s.execution_provider.to_value(),
            "device-id" => s.device_id.to_value(),
            "fp16" => s.fp16.to_value(),
            "threads" => s.threads.to_value(),
            "stats" => {
                drop(s);
                self.stats_structure().to_value()
            }
            name => unreachable!("property {name} is not registered"),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        obj.add_pad(&self.sinkpad).unwrap();
        obj.add_pad(&self.srcpad).unwrap();
    }
}

impl GstObjectImpl for I2iDecode {}

impl ElementImpl for I2iDecode {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Diffusion latent decoder",
                "Codec/Decoder/Video",
                "Runs a diffusion model's VAE decoder (KL or TAESD) on latent frames from i2itransform output=latent",
                "i2i developers",
            )
        });
        Some(&*META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let src = gst::Caps::builder("video/x-raw")
                .field("format", gst::List::new(SRC_FORMATS))
                .field("width", gst::IntRange::new(1, i32::MAX))
                .field("height", gst::IntRange::new(1, i32::MAX))
                .build();
            vec![
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &gst::Caps::new_empty_simple(LATENT_CAPS_NAME),
                )
                .unwrap(),
                gst::PadTemplate::new(
                    "src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &src,
                )
                .unwrap(),
            ]
        });
        TEMPLATES.as_ref()
    }

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        if transition == gst::StateChange::ReadyToPaused {
            let model = self.settings.lock().unwrap().model.clone();
            if model.as_deref().is_none_or(str::is_empty) {
                gst::element_imp_error!(
                    self,
                    gst::ResourceError::NotFound,
                    ("No model set"),
                    ["Set the model property to the model directory the latents come from"]
                );
                return Err(gst::StateChangeError);
            }
            *self.stats.lock().unwrap() = Stats::default();
            self.running.store(true, Ordering::SeqCst);
        }
        let ret = self.parent_change_state(transition);
        if transition == gst::StateChange::PausedToReady {
            self.running.store(false, Ordering::SeqCst);
            let mut st = self.state.lock().unwrap();
            st.decoder = None;
            st.format = None;
            st.conv = None;
            st.slot = [None];
        }
        ret
    }
}
