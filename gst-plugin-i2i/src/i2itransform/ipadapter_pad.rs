// SPDX-License-Identifier: MPL-2.0
//! IP-Adapter in `i2itransform`: the properties `ip-adapter-image`, `ip-adapter-scale` and
//! `ip-adapter-interval`, the `ipadapter` request pad, and the encoder thread.
//!
//! A picture (a file from the property or the live settings, or the newest frame of the
//! `ipadapter` pad, at most one every `ip-adapter-interval` ms) goes to the encoder thread,
//! which owns the model's `image_encoder/` and `image_proj/` sessions
//! ([`crate::diffusion::ipadapter::ImageSide`]) and a small cache of the files it encoded;
//! the inference task only picks up the finished tokens before a batch
//! ([`I2iTransform::apply_ip`]). A picture that cannot be decoded is counted
//! (`ip-adapter-refused` in the stats) and warned about at most every 2 s; the last good
//! picture stays.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::imp::{CAT, I2iTransform};
use super::worker::Worker;
use crate::diffusion::Engine;
use crate::diffusion::ipadapter::{self, ImageSide, PictureTokens, decode_picture};
use crate::infer::convert::InputConverter;
use crate::infer::pads::InferElementExt;
use i2i_core::infer::ResizeMode;
use i2i_core::rate_limit::RateLimit;
use i2i_core::settings::SettingsUpdate;

pub(super) const PROPERTIES: &[&str] = &[
    "ip-adapter-image",
    "ip-adapter-scale",
    "ip-adapter-interval",
];
pub(super) const PAD_NAME: &str = "ipadapter";
const DEFAULT_SCALE: &str = "1";
const DEFAULT_INTERVAL_MS: u32 = 200;
/// Files whose tokens are kept (a show switching between a few styles encodes each once).
const CACHE_SIZE: usize = 8;
const WARN_INTERVAL: Duration = Duration::from_secs(2);

pub(super) fn param_specs() -> Vec<glib::ParamSpec> {
    vec![
        glib::ParamSpecString::builder("ip-adapter-image")
            .nick("IP-Adapter image")
            .blurb("A JPEG or PNG file whose style or subject the output takes (an IP-Adapter model: its UNet has the input ipadapter_scale); empty = none. Encoded off the inference thread; a picture that cannot be decoded is refused and the last good one stays")
            .mutable_playing()
            .build(),
        glib::ParamSpecString::builder("ip-adapter-scale")
            .nick("IP-Adapter scale")
            .blurb("How much the picture acts, 0..2: one value for every IP-Adapter layer or a comma list with one per layer (0 = as without a picture)")
            .default_value(Some(DEFAULT_SCALE))
            .mutable_playing()
            .build(),
        glib::ParamSpecUInt::builder("ip-adapter-interval")
            .nick("IP-Adapter interval")
            .blurb("Milliseconds between two frames of the ipadapter pad sent to the image encoder (the newest frame is taken)")
            .maximum(600_000)
            .default_value(DEFAULT_INTERVAL_MS)
            .mutable_playing()
            .build(),
    ]
}

/// What the encoder thread is asked to encode next (only the newest request waits).
enum Job {
    File(String),
    Frame(Vec<u8>, u32, u32),
    Clear,
}

/// What the encoder thread finished, for the next batch.
enum Outcome {
    Picture(PictureTokens),
    Cleared,
}

#[derive(Default)]
struct Shared {
    job: Mutex<(Option<Job>, bool)>,
    cond: Condvar,
    outcome: Mutex<Option<Outcome>>,
    /// Refusals not reported yet.
    errors: Mutex<Vec<String>>,
    refused: AtomicU64,
    encoded: AtomicU64,
}

struct Encoder {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Encoder {
    fn submit(&self, job: Job) {
        self.shared.job.lock().unwrap().0 = Some(job);
        self.shared.cond.notify_all();
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        self.shared.job.lock().unwrap().1 = true;
        self.shared.cond.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A file as the cache knows it: path, modification time, length.
type FileKey = (String, Option<SystemTime>, u64);

/// The encoder thread's own: the image side, its negative tokens and the file cache.
struct EncoderSide {
    side: ImageSide,
    negative: Arc<Vec<f32>>,
    /// (path, modification time, length) -> tokens, newest last.
    cache: VecDeque<(FileKey, Arc<Vec<f32>>)>,
}

impl EncoderSide {
    fn encode(&mut self, job: Job) -> Result<Outcome, String> {
        let tokens = match job {
            Job::Clear => return Ok(Outcome::Cleared),
            Job::File(path) => {
                let meta = std::fs::metadata(&path)
                    .map_err(|e| format!("ip-adapter-image {path}: cannot read ({e})"))?;
                let key = (path.clone(), meta.modified().ok(), meta.len());
                if let Some(i) = self.cache.iter().position(|(k, _)| *k == key) {
                    let hit = self.cache.remove(i).unwrap();
                    let t = hit.1.clone();
                    self.cache.push_back(hit);
                    t
                } else {
                    let (rgb, w, h) = decode_picture(std::path::Path::new(&path))
                        .map_err(|e| format!("ip-adapter-image {e}"))?;
                    let t = Arc::new(
                        self.side
                            .tokens(&rgb, w, h)
                            .map_err(|e| format!("ip-adapter-image {path}: {e}"))?,
                    );
                    self.cache.push_back((key, t.clone()));
                    while self.cache.len() > CACHE_SIZE {
                        self.cache.pop_front();
                    }
                    t
                }
            }
            Job::Frame(rgb, w, h) => Arc::new(
                self.side
                    .tokens(&rgb, w, h)
                    .map_err(|e| format!("{PAD_NAME} pad frame {w}x{h}: {e}"))?,
            ),
        };
        Ok(Outcome::Picture(PictureTokens {
            tokens,
            negative: self.negative.clone(),
        }))
    }
}

fn encoder_loop(shared: Arc<Shared>, mut side: EncoderSide) {
    loop {
        let job = {
            let mut slot = shared.job.lock().unwrap();
            loop {
                if slot.1 {
                    return;
                }
                if let Some(j) = slot.0.take() {
                    break j;
                }
                slot = shared.cond.wait(slot).unwrap();
            }
        };
        match side.encode(job) {
            Ok(o) => {
                shared.encoded.fetch_add(1, Ordering::Relaxed);
                *shared.outcome.lock().unwrap() = Some(o);
            }
            Err(e) => {
                shared.refused.fetch_add(1, Ordering::Relaxed);
                shared.errors.lock().unwrap().push(e);
            }
        }
    }
}

/// The `ipadapter` pad and its converter to RGB at the frame's own size.
struct IpPad {
    pad: gst::Pad,
    conv: Option<InputConverter>,
    last_sent: Option<Instant>,
    /// The newest frame that came before the encoder started (the model still loading).
    early: Option<Job>,
}

pub(super) struct Inner {
    image: Option<String>,
    scale_text: String,
    scale: Vec<f32>,
    interval_ms: u32,
    /// A property value refused before start, for the start to fail with.
    refused: Option<String>,
    /// The number of IP layers of the running model (None: stopped or not an IP model).
    layers: Option<usize>,
    /// The scale changed since the engine got it.
    scale_changed: bool,
    encoder: Option<Encoder>,
    pad: Option<IpPad>,
    warnings: Option<RateLimit>,
    /// The picture the engine has (for an engine loaded again: `size-from-input`).
    applied: Option<PictureTokens>,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            image: None,
            scale_text: DEFAULT_SCALE.into(),
            scale: vec![1.0],
            interval_ms: DEFAULT_INTERVAL_MS,
            refused: None,
            layers: None,
            scale_changed: false,
            encoder: None,
            pad: None,
            warnings: None,
            applied: None,
        }
    }
}

#[derive(Default)]
pub(super) struct IpState(Mutex<Inner>);

impl IpState {
    /// (pictures encoded, pictures refused) since start.
    pub(super) fn counts(&self) -> (u64, u64) {
        let inner = self.0.lock().unwrap();
        inner.encoder.as_ref().map_or((0, 0), |e| {
            (
                e.shared.encoded.load(Ordering::Relaxed),
                e.shared.refused.load(Ordering::Relaxed),
            )
        })
    }
}

impl I2iTransform {
    pub(super) fn set_ip_property(&self, name: &str, value: &glib::Value, running: bool) {
        let text = || value.get::<Option<String>>().unwrap().unwrap_or_default();
        let mut inner = self.ip.0.lock().unwrap();
        if running && inner.layers.is_none() && name != "ip-adapter-interval" {
            drop(inner);
            let model = self.settings.lock().unwrap().model.clone();
            self.refuse(&format!(
                "{name} refused: the model {} has no UNet input '{}' (not an IP-Adapter model)",
                model.unwrap_or_default(),
                ipadapter::SCALE_INPUT
            ));
            return;
        }
        match name {
            "ip-adapter-image" => {
                let t = text();
                let image = Some(t).filter(|t| !t.is_empty());
                if let Some(e) = &inner.encoder {
                    e.submit(image.clone().map_or(Job::Clear, Job::File));
                }
                inner.image = image;
            }
            "ip-adapter-scale" => {
                let t = text();
                let parsed = ipadapter::parse_scale(&t).and_then(|v| match inner.layers {
                    Some(l) => ipadapter::scale_vector(&v, l).map(|_| v),
                    None => Ok(v),
                });
                match parsed {
                    Ok(v) => {
                        inner.scale = v;
                        inner.scale_text = t;
                        inner.scale_changed = true;
                        inner.refused = None;
                    }
                    Err(e) => {
                        if !running {
                            inner.refused = Some(e.clone());
                        }
                        drop(inner);
                        self.refuse(&e);
                    }
                }
            }
            "ip-adapter-interval" => inner.interval_ms = value.get().unwrap(),
            _ => unreachable!("property {name} is not an IP-Adapter property"),
        }
    }

    pub(super) fn ip_property(&self, name: &str) -> glib::Value {
        let inner = self.ip.0.lock().unwrap();
        match name {
            "ip-adapter-image" => inner.image.to_value(),
            "ip-adapter-scale" => inner.scale_text.to_value(),
            "ip-adapter-interval" => inner.interval_ms.to_value(),
            _ => unreachable!("property {name} is not an IP-Adapter property"),
        }
    }

    /// The IP-Adapter keys of an update from the settings pad (`/style PATH`,
    /// `/ipscale 0.7`): applied as the properties are; the refusals, one per key.
    pub(super) fn apply_ip_settings(&self, u: &SettingsUpdate) -> Vec<String> {
        if u.ip_adapter_image.is_none() && u.ip_adapter_scale.is_none() {
            return Vec::new();
        }
        let layers = self.ip.0.lock().unwrap().layers;
        if layers.is_none() {
            let unet = self
                .settings
                .lock()
                .unwrap()
                .model
                .clone()
                .unwrap_or_default();
            return vec![format!(
                "{}: the model {unet} has no UNet input '{}' (not an IP-Adapter model)",
                u.summary(),
                ipadapter::SCALE_INPUT
            )];
        }
        let mut refused = Vec::new();
        if let Some(path) = &u.ip_adapter_image {
            self.set_ip_property("ip-adapter-image", &path.to_value(), true);
            self.obj().notify("ip-adapter-image");
        }
        if let Some(v) = &u.ip_adapter_scale {
            let vals: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            match layers.map(|l| ipadapter::scale_vector(&vals, l)) {
                Some(Err(e)) => refused.push(e),
                _ => {
                    let text = i2i_core::settings::format_ip_adapter_scale(v);
                    self.set_ip_property("ip-adapter-scale", &text.to_value(), true);
                    self.obj().notify("ip-adapter-scale");
                }
            }
        }
        refused
    }

    /// At start, after the model loaded: an IP-Adapter model gets its image side on a
    /// thread of its own (and the picture set, encoded before the first frame); IP-Adapter
    /// settings on another model are an ERROR naming the missing input.
    pub(super) fn start_ip(&self, engine: &mut Engine) -> Result<(), gst::StateChangeError> {
        let mut inner = self.ip.0.lock().unwrap();
        inner.encoder = None;
        inner.layers = None;
        inner.applied = None;
        let unet = engine.options().model_dir.join("unet").join("model.onnx");
        let fail = |msg: String| {
            gst::element_imp_error!(self, gst::LibraryError::Settings, ("{}", msg));
            gst::StateChangeError
        };
        if let Some(e) = inner.refused.clone() {
            return Err(fail(format!("Invalid property value: {e}")));
        }
        let Some(layout) = engine.ip_layout() else {
            let set: Vec<&str> = [
                inner.image.is_some().then_some("ip-adapter-image"),
                (inner.scale_text != DEFAULT_SCALE).then_some("ip-adapter-scale"),
                inner.pad.is_some().then_some("the ipadapter pad"),
            ]
            .into_iter()
            .flatten()
            .collect();
            if set.is_empty() {
                return Ok(());
            }
            return Err(fail(format!(
                "{} {} set, but {} has no input '{}': it is not an IP-Adapter model (see docs/models.md, \"IP-Adapter models\"); unset it or use an IP-Adapter model",
                set.join(", "),
                if set.len() == 1 { "is" } else { "are" },
                unet.display(),
                ipadapter::SCALE_INPUT
            )));
        };
        let scale = ipadapter::scale_vector(&inner.scale, layout.layers)
            .map_err(|e| fail(format!("{}: {e}", unet.display())))?;
        engine
            .set_ip_scale(&scale)
            .map_err(|e| fail(e.to_string()))?;
        let o = engine.options();
        let mut side = ImageSide::load(&o.model_dir, layout, o.intra_threads, o.cpu_arena)
            .map_err(|e| fail(format!("Could not load the IP-Adapter image side: {e}")))?;
        let negative = Arc::new(
            side.negative_tokens()
                .map_err(|e| fail(format!("IP-Adapter negative tokens: {e}")))?,
        );
        let mut side = EncoderSide {
            side,
            negative,
            cache: VecDeque::new(),
        };
        let shared = Arc::new(Shared::default());
        // The picture set before start is there from the first frame on.
        if let Some(path) = inner.image.clone() {
            match side.encode(Job::File(path)) {
                Ok(Outcome::Picture(p)) => {
                    engine
                        .set_ip_picture(Some(p.clone()))
                        .map_err(|e| fail(e.to_string()))?;
                    inner.applied = Some(p);
                }
                Ok(Outcome::Cleared) => (),
                Err(e) => {
                    shared.refused.fetch_add(1, Ordering::Relaxed);
                    shared.errors.lock().unwrap().push(e);
                }
            }
        }
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("i2i-ipadapter".into())
            .spawn(move || encoder_loop(thread_shared, side))
            .map_err(|e| fail(format!("cannot start the IP-Adapter encoder thread: {e}")))?;
        inner.encoder = Some(Encoder {
            shared,
            thread: Some(thread),
        });
        inner.layers = Some(layout.layers);
        inner.scale_changed = false;
        if let Some(p) = inner.pad.as_mut() {
            p.last_sent = None;
            if let (Some(job), Some(e)) = (p.early.take(), inner.encoder.as_ref()) {
                e.submit(job);
            }
        }
        gst::info!(CAT, imp = self, "IP-Adapter: {layout:?}");
        Ok(())
    }

    pub(super) fn stop_ip(&self) {
        let encoder = {
            let mut inner = self.ip.0.lock().unwrap();
            inner.layers = None;
            inner.encoder.take()
        };
        // Joined outside the lock: the thread takes no element lock.
        drop(encoder);
    }

    /// Before a batch: the tokens the encoder thread finished and a changed scale go to
    /// the engine; refused pictures are warned about (rate-limited).
    pub(super) fn apply_ip(&self, w: &mut Worker) {
        let (outcome, scale, errors) = {
            let mut inner = self.ip.0.lock().unwrap();
            let Some(enc) = inner.encoder.as_ref() else {
                return;
            };
            let outcome = enc.shared.outcome.lock().unwrap().take();
            let errors = std::mem::take(&mut *enc.shared.errors.lock().unwrap());
            let refused = enc.shared.refused.load(Ordering::Relaxed);
            let scale = std::mem::take(&mut inner.scale_changed).then(|| inner.scale.clone());
            let text = errors.last().and_then(|e| {
                inner
                    .warnings
                    .get_or_insert_with(|| RateLimit::new(WARN_INTERVAL))
                    .message(format!(
                        "IP-Adapter picture refused, the last good one stays: {e} ({refused} refused so far, see stats ip-adapter-refused)"
                    ))
            });
            (outcome, scale, text)
        };
        if let Some(text) = errors {
            gst::element_imp_warning!(self, gst::StreamError::Decode, ("{}", text));
        }
        if let Some(s) = scale
            && let Err(e) = w.engine.set_ip_scale(&s)
        {
            self.refuse(&format!("ip-adapter-scale refused: {e}"));
        }
        let picture = match outcome {
            Some(Outcome::Picture(p)) => Some(p),
            Some(Outcome::Cleared) => None,
            None => return,
        };
        match w.engine.set_ip_picture(picture.clone()) {
            Ok(()) => self.ip.0.lock().unwrap().applied = picture,
            Err(e) => self.refuse(&format!("IP-Adapter picture not applied: {e}")),
        }
    }

    /// An engine loaded again (`size-from-input`) takes up the picture and scale at once.
    pub(super) fn restore_ip(&self, engine: &mut Engine) {
        let (picture, scale) = {
            let inner = self.ip.0.lock().unwrap();
            if inner.layers.is_none() {
                return;
            }
            (inner.applied.clone(), inner.scale.clone())
        };
        let result = engine
            .set_ip_scale(&scale)
            .and_then(|()| engine.set_ip_picture_now(picture));
        if let Err(e) = result {
            self.refuse(&format!(
                "IP-Adapter settings not restored after the reload: {e}"
            ));
        }
    }

    pub(super) fn ip_pad_template(caps: &gst::Caps) -> gst::PadTemplate {
        gst::PadTemplate::new(
            PAD_NAME,
            gst::PadDirection::Sink,
            gst::PadPresence::Request,
            caps,
        )
        .unwrap()
    }

    pub(super) fn request_ip_pad(&self, templ: &gst::PadTemplate) -> Option<gst::Pad> {
        let mut inner = self.ip.0.lock().unwrap();
        if inner.pad.is_some() {
            gst::warning!(CAT, imp = self, "pad {PAD_NAME} exists already");
            return None;
        }
        let pad = gst::Pad::builder_from_template(templ)
            .name(PAD_NAME)
            .chain_function(|_pad, parent, buffer| {
                I2iTransform::catch_panic_pad_function(
                    parent,
                    || Err(gst::FlowError::Error),
                    |imp| imp.ip_chain(buffer),
                )
            })
            .event_function(|pad, parent, event| {
                I2iTransform::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.ip_event(pad, event),
                )
            })
            .build();
        inner.pad = Some(IpPad {
            pad: pad.clone(),
            conv: None,
            last_sent: None,
            early: None,
        });
        drop(inner);
        pad.set_active(true).ok()?;
        self.obj().add_pad(&pad).ok()?;
        Some(pad)
    }

    /// True when `pad` was the `ipadapter` pad (and is gone now).
    pub(super) fn release_ip_pad(&self, pad: &gst::Pad) -> bool {
        let mut inner = self.ip.0.lock().unwrap();
        if inner.pad.as_ref().is_none_or(|p| &p.pad != pad) {
            return false;
        }
        inner.pad = None;
        drop(inner);
        let _ = pad.set_active(false);
        let _ = self.obj().remove_pad(pad);
        true
    }

    fn ip_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        let gst::EventView::Caps(c) = event.view() else {
            // EOS, segments and the like stop here: the main stream decides.
            return true;
        };
        // The picture at its own size: the image side resizes it as CLIP does.
        let Some(conv) = self.side_pad_converter(pad, c.caps_owned(), |info| {
            (info.width(), info.height(), ResizeMode::default())
        }) else {
            return false;
        };
        if let Some(p) = self.ip.0.lock().unwrap().pad.as_mut() {
            p.conv = Some(conv);
        }
        true
    }

    /// A frame of the `ipadapter` pad: sent to the encoder when `ip-adapter-interval` has
    /// passed since the last one sent (frames in between are not needed: only the newest
    /// picture is the style).
    fn ip_chain(&self, buffer: gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        let mut guard = self.ip.0.lock().unwrap();
        let inner = &mut *guard;
        let interval = Duration::from_millis(u64::from(inner.interval_ms));
        let Some(p) = inner.pad.as_mut() else {
            return Err(gst::FlowError::Flushing);
        };
        if p.last_sent.is_some_and(|t| t.elapsed() < interval) {
            return Ok(gst::FlowSuccess::Ok);
        }
        let Some(conv) = p.conv.as_ref() else {
            drop(guard);
            gst::element_imp_error!(
                self,
                gst::CoreError::Negotiation,
                ["{}: a buffer before any caps", PAD_NAME]
            );
            return Err(gst::FlowError::NotNegotiated);
        };
        let (w, h) = conv.model_size();
        match conv.convert(buffer.as_ref()) {
            Ok(rgb) => {
                p.last_sent = Some(Instant::now());
                let job = Job::Frame(rgb, w, h);
                match &inner.encoder {
                    Some(e) => e.submit(job),
                    None => p.early = Some(job),
                }
            }
            Err(e) => {
                drop(guard);
                gst::element_imp_warning!(
                    self,
                    gst::StreamError::Decode,
                    [
                        "{}: dropping a frame (pts {:?}): {}",
                        PAD_NAME,
                        buffer.pts(),
                        e
                    ]
                );
            }
        }
        Ok(gst::FlowSuccess::Ok)
    }
}
