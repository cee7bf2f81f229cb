// SPDX-License-Identifier: MPL-2.0
//! `zmqmsgpacksink`: one ZeroMQ message `[timestamp_ms, index, jpg]` per frame.
//!
//! JPEG input is sent as it is; raw video is encoded with libjpeg-turbo ([`i2i_core::jpeg`]).
//! Latents (`application/x-i2i-latent`, from `i2itransform output=latent`) go as the
//! tensor form `[timestamp_ms, index, payload, meta]` ([`i2i_core::tensor`]), in float32 or,
//! with `latent-dtype=f16`, float16; a buffer whose size does not match its caps is
//! dropped, counted in `stats` (`dropped-invalid`) and reported (rate-limited), the stream goes on.
//!
//! Sockets:
//! - `pub`: an XPUB socket (PUB on the wire: SUB peers cannot tell), sent to with
//!   `ZMQ_DONTWAIT`. libzmq queues each subscriber's frames separately and drops a frame
//!   only for a subscriber whose queue is full (its high-water mark), so one slow viewer
//!   loses its own frames and never holds back the others. (`ZMQ_XPUB_NODROP` would
//!   refuse the frame for everyone instead: one viewer reading slowly froze all of them.)
//!   The sender cannot see those per-subscriber drops; the subscriber sees them as gaps in
//!   the index. With `ZMQ_XPUB_VERBOSER` every subscription and every unsubscription (a
//!   subscriber leaving) reaches the sink, which counts the subscribers and the frames
//!   sent while nobody listened.
//! - `push`: frames go round-robin to the pullers; when they are all behind the sink
//!   waits (backpressure), and `unlock()` ends the wait on flush or state change. An
//!   application's EOS request (the first Ctrl-C of `gst-launch-1.0 -e`) reaches the sink
//!   directly ([`crate::eos_request`]): a frame no puller takes within its grace is then
//!   given up and counted in `dropped-undelivered`, so the pipeline ends.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;
use gst_video::prelude::*;
use i2i_compat::{Alias, Deprecations};

use super::{LatentDtype, SinkSocketType};
use crate::eos_request::{self, EosRequest};
use crate::interrupt::{Interrupt, Wait};
use crate::latent;
use crate::unix_time;
use crate::zmq_element;
use i2i_core::curve::ElementCurve;
use i2i_core::jpeg::{Encoder, PackedFormat, Plane, YuvRange};
use i2i_core::protocol;
use i2i_core::rate_limit::RateLimit;
use i2i_core::tensor::{LATENT_CAPS_NAME, TensorMeta};
use i2i_core::zmq_endpoint;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "zmqmsgpacksink",
        gst::DebugColorFlags::empty(),
        Some("ZeroMQ msgpack frame sink"),
    )
});

const DEFAULT_PORT: u32 = 5557;
const DEFAULT_BIND: bool = true;
const DEFAULT_SOCKET_TYPE: SinkSocketType = SinkSocketType::Pub;
const DEFAULT_QUALITY: i32 = 85;
const DEFAULT_SEND_HWM: i32 = 10;
const DEFAULT_LINGER_MS: i32 = 1000;
const DEFAULT_LATENT_DTYPE: LatentDtype = LatentDtype::F32;

/// Renamed properties whose old names still work for one release (docs/properties.md).
pub(crate) const RENAMED: &[Alias] = &[Alias {
    old: "linger",
    new: "linger-timeout",
}];

/// Renamed stats fields, (old, new), still filled under the old names for one release.
const RENAMED_STATS: &[(&str, &str)] = &[
    ("undelivered", "dropped-undelivered"),
    ("invalid", "dropped-invalid"),
];

#[derive(Debug, Clone)]
struct Settings {
    port: u32,
    endpoint: Option<String>,
    bind: bool,
    socket_type: SinkSocketType,
    quality: i32,
    send_hwm: i32,
    linger_ms: i32,
    latent_dtype: LatentDtype,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            port: DEFAULT_PORT,
            endpoint: None,
            bind: DEFAULT_BIND,
            socket_type: DEFAULT_SOCKET_TYPE,
            quality: DEFAULT_QUALITY,
            send_hwm: DEFAULT_SEND_HWM,
            linger_ms: DEFAULT_LINGER_MS,
            latent_dtype: DEFAULT_LATENT_DTYPE,
        }
    }
}

impl Settings {
    fn socket_type_nick(&self) -> &'static str {
        match self.socket_type {
            SinkSocketType::Pub => "pub",
            SinkSocketType::Push => "push",
        }
    }

    /// The endpoint to bind or connect: `endpoint` when set, else one made from `port`.
    fn effective_endpoint(&self) -> String {
        match &self.endpoint {
            Some(e) if !e.is_empty() => e.clone(),
            _ if self.bind => format!("tcp://*:{}", self.port),
            _ => format!("tcp://localhost:{}", self.port),
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    frames: u64,
    bytes: u64,
    /// Frames the socket would not take (EAGAIN).
    busy: u64,
    no_subscriber: u64,
    subscribers: u64,
    undelivered: u64,
    invalid: u64,
}

enum Input {
    Jpeg,
    Raw(gst_video::VideoInfo),
    /// Float32 latents in native byte order, described by the meta sent with each.
    Latent(TensorMeta),
}

struct State {
    // Field order is drop order: the socket closes before the context terminates, and
    // the context's termination waits up to `linger` for queued frames to go out.
    socket: zmq::Socket,
    _context: zmq::Context,
    socket_type: SinkSocketType,
    input: Option<Input>,
    encoder: Option<Encoder>,
    /// The message being sent, reused from frame to frame.
    msg: Vec<u8>,
    /// Latent payload in the wire's byte order and dtype, reused from frame to frame.
    wire: Vec<u8>,
    /// Frames seen, the index of frames without an offset.
    count: u64,
    /// Subscriptions per topic (XPUB only), to tell whether anyone receives a frame.
    topics: HashMap<Vec<u8>, u64>,
}

#[derive(Default)]
pub struct ZmqMsgpackSink {
    curve: ElementCurve,
    deprecations: Deprecations,
    settings: Mutex<Settings>,
    state: Mutex<Option<State>>,
    stats: Mutex<Stats>,
    last_endpoint: Mutex<Option<String>>,
    interrupt: Mutex<Option<Arc<Interrupt>>>,
    eos_request: EosRequest,
    undelivered_limit: Mutex<RateLimit>,
    invalid_limit: Mutex<RateLimit>,
}

#[glib::object_subclass]
impl ObjectSubclass for ZmqMsgpackSink {
    const NAME: &'static str = "GstZmqMsgpackSink";
    type Type = super::ZmqMsgpackSink;
    type ParentType = gst_base::BaseSink;
}

/// Sets `ZMQ_XPUB_VERBOSER` (no setter in the zmq crate): every subscription and
/// unsubscription reaches the sink, including those of a subscriber that disconnects.
fn set_xpub_verboser(socket: &mut zmq::Socket) -> Result<(), zmq::Error> {
    let one: std::os::raw::c_int = 1;
    // SAFETY: a valid socket, an int option value of the right size.
    let rc = unsafe {
        zmq_sys::zmq_setsockopt(
            socket.as_mut_ptr(),
            zmq_sys::ZMQ_XPUB_VERBOSER as std::os::raw::c_int,
            &one as *const std::os::raw::c_int as *const std::os::raw::c_void,
            std::mem::size_of::<std::os::raw::c_int>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        // SAFETY: reads the thread's errno.
        Err(zmq::Error::from_raw(unsafe { zmq_sys::zmq_errno() }))
    }
}

fn packed_format(format: gst_video::VideoFormat) -> Option<PackedFormat> {
    use gst_video::VideoFormat as F;
    Some(match format {
        F::Rgb => PackedFormat::Rgb,
        F::Bgr => PackedFormat::Bgr,
        F::Rgbx => PackedFormat::Rgbx,
        F::Bgrx => PackedFormat::Bgrx,
        F::Rgba => PackedFormat::Rgba,
        F::Bgra => PackedFormat::Bgra,
        F::Gray8 => PackedFormat::Gray,
        _ => return None,
    })
}

impl ZmqMsgpackSink {
    /// Unix time (ns) at which the buffer entered the pipeline: its `timestamp/x-unix`
    /// reference meta when present, else its running time on the pipeline clock.
    fn entry_unix_ns(&self, buffer: &gst::BufferRef) -> u64 {
        if let Some(ns) = unix_time::ns_from_meta(buffer) {
            return ns;
        }
        let unix_now = unix_time::now_ns();
        let obj = self.obj();
        let (Some(clock), Some(base_time), Some(pts)) =
            (obj.clock(), obj.base_time(), buffer.pts())
        else {
            return unix_now;
        };
        let segment = obj.segment();
        let Some(segment) = segment.downcast_ref::<gst::ClockTime>() else {
            return unix_now;
        };
        let Some(running_time) = segment.to_running_time(pts) else {
            return unix_now;
        };
        let clock_now = clock.time();
        protocol::unix_time_of_clock_time(
            unix_now,
            clock_now.nseconds(),
            (base_time + running_time).nseconds(),
        )
    }

    /// Reads subscription messages an XPUB socket has for us.
    fn read_subscriptions(&self, state: &mut State) {
        while let Ok(m) = state.socket.recv_bytes(zmq::DONTWAIT) {
            match m.split_first() {
                Some((1, topic)) => {
                    gst::debug!(CAT, imp = self, "subscription to {:02x?}", topic);
                    *state.topics.entry(topic.to_vec()).or_default() += 1;
                }
                Some((0, topic)) => {
                    gst::debug!(CAT, imp = self, "unsubscription from {:02x?}", topic);
                    if let Some(n) = state.topics.get_mut(topic) {
                        *n -= 1;
                        if *n == 0 {
                            state.topics.remove(topic);
                        }
                    }
                }
                _ => {}
            }
        }
        self.stats.lock().unwrap().subscribers = state.topics.values().sum();
    }

    /// Encodes the frame (when raw) and packs the message into `state.msg`; `Ok(false)`
    /// when the buffer was dropped (latents that do not match their caps).
    fn pack(
        &self,
        state: &mut State,
        buffer: &gst::Buffer,
        timestamp_ms: i64,
        index: u64,
        (quality, latent_dtype): (i32, LatentDtype),
    ) -> Result<bool, gst::FlowError> {
        let State {
            input,
            encoder,
            msg,
            wire,
            ..
        } = state;
        match input {
            None => {
                gst::element_imp_error!(
                    self,
                    gst::CoreError::Negotiation,
                    ("Received a buffer before caps were set")
                );
                Err(gst::FlowError::NotNegotiated)
            }
            Some(Input::Jpeg) => {
                let map = buffer.map_readable().map_err(|_| {
                    gst::element_imp_error!(
                        self,
                        gst::ResourceError::Read,
                        ("Could not map the JPEG buffer")
                    );
                    gst::FlowError::Error
                })?;
                protocol::encode_frame_into(msg, timestamp_ms, index, &map);
                Ok(true)
            }
            Some(Input::Latent(meta)) => {
                // The buffer is float32 whatever goes on the wire (`meta.dtype`, set below).
                if let Some(wrong) = latent::f32_size_error(buffer.size(), meta) {
                    let invalid = {
                        let mut stats = self.stats.lock().unwrap();
                        stats.invalid += 1;
                        stats.invalid
                    };
                    let text = format!("Dropped latent frame {index}: {wrong} ({invalid} dropped)");
                    gst::warning!(CAT, imp = self, "{text}");
                    if let Some(text) = self.invalid_limit.lock().unwrap().message(text) {
                        gst::element_imp_warning!(self, gst::StreamError::Format, ("{text}"));
                    }
                    return Ok(false);
                }
                let map = buffer.map_readable().map_err(|_| {
                    gst::element_imp_error!(
                        self,
                        gst::ResourceError::Read,
                        ("Could not map the latent buffer")
                    );
                    gst::FlowError::Error
                })?;
                meta.dtype = latent_dtype.into();
                latent::encode_into(msg, wire, timestamp_ms, index, &map, meta);
                Ok(true)
            }
            Some(Input::Raw(info)) => {
                let encoder = match encoder {
                    Some(e) => e,
                    None => encoder.insert(Encoder::new(quality).map_err(|e| {
                        gst::element_imp_error!(self, gst::LibraryError::Init, ("{e}"));
                        gst::FlowError::Error
                    })?),
                };
                if encoder.quality() != quality {
                    encoder.set_quality(quality);
                }
                let frame =
                    gst_video::VideoFrameRef::from_buffer_ref_readable(buffer.as_ref(), info)
                        .map_err(|_| {
                            gst::element_imp_error!(
                                self,
                                gst::StreamError::Format,
                                (
                                    "Buffer of {} bytes does not hold a {}x{} {} frame",
                                    buffer.size(),
                                    info.width(),
                                    info.height(),
                                    info.format().to_str()
                                )
                            );
                            gst::FlowError::Error
                        })?;
                let (w, h) = (frame.width() as usize, frame.height() as usize);
                let strides = frame.plane_stride();
                let plane = |i: usize| -> Result<Plane<'_>, gst::FlowError> {
                    let data = frame
                        .plane_data(i as u32)
                        .map_err(|_| gst::FlowError::Error)?;
                    let stride = usize::try_from(strides[i]).map_err(|_| gst::FlowError::Error)?;
                    Ok(Plane { data, stride })
                };
                let format = frame.format();
                // JPEG stores full-range YCbCr; video caps say which range the planes use.
                let range = if info.colorimetry().range() == gst_video::VideoColorRange::Range16_235
                {
                    YuvRange::Limited
                } else {
                    YuvRange::Full
                };
                let encoded = match format {
                    gst_video::VideoFormat::I420 => {
                        encoder.encode_i420(plane(0)?, plane(1)?, plane(2)?, w, h, range)
                    }
                    gst_video::VideoFormat::Nv12 => {
                        encoder.encode_nv12(plane(0)?, plane(1)?, w, h, range)
                    }
                    other => match packed_format(other) {
                        Some(f) => encoder.encode_packed(f, plane(0)?, w, h),
                        None => {
                            gst::element_imp_error!(
                                self,
                                gst::CoreError::Negotiation,
                                ("Unsupported format {}", other.to_str())
                            );
                            return Err(gst::FlowError::NotNegotiated);
                        }
                    },
                };
                match encoded {
                    Ok(jpeg) => {
                        protocol::encode_frame_into(msg, timestamp_ms, index, jpeg);
                        Ok(true)
                    }
                    Err(e) => {
                        gst::element_imp_error!(
                            self,
                            gst::StreamError::Encode,
                            (
                                "Could not encode frame {index} ({w}x{h} {}): {e}",
                                format.to_str()
                            )
                        );
                        Err(gst::FlowError::Error)
                    }
                }
            }
        }
    }

    /// Sends on PUSH, waiting while every puller is at its high-water mark. An unlock
    /// (flush or state change) ends the wait; in PAUSED the frame waits for PLAYING and
    /// goes on, when flushing it is given up.
    fn push_send<'a>(
        &'a self,
        mut guard: std::sync::MutexGuard<'a, Option<State>>,
        interrupt: &Interrupt,
        index: u64,
        len: u64,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        loop {
            let state = guard.as_mut().ok_or(gst::FlowError::Flushing)?;
            match state.socket.send(&state.msg[..], zmq::DONTWAIT) {
                Ok(()) => {
                    let mut stats = self.stats.lock().unwrap();
                    stats.frames += 1;
                    stats.bytes += len;
                    return Ok(gst::FlowSuccess::Ok);
                }
                Err(zmq::Error::EAGAIN) if self.eos_request.give_up() => {
                    drop(guard);
                    let undelivered = {
                        let mut stats = self.stats.lock().unwrap();
                        stats.undelivered += 1;
                        stats.undelivered
                    };
                    let text = format!(
                        "End of stream requested: frame {index} not delivered, no puller on {} took it within {} ms ({undelivered} undelivered)",
                        self.last_endpoint
                            .lock()
                            .unwrap()
                            .clone()
                            .unwrap_or_default(),
                        eos_request::GRACE.as_millis()
                    );
                    if let Some(text) = self.undelivered_limit.lock().unwrap().message(text) {
                        gst::element_imp_warning!(self, gst::ResourceError::Write, ("{text}"));
                    }
                    return Ok(gst::FlowSuccess::Ok);
                }
                Err(zmq::Error::EAGAIN) => {
                    gst::trace!(CAT, imp = self, "frame {index}: waiting for a puller");
                    // Bounded, to look at the end request now and then.
                    let poll = Some(std::time::Duration::from_millis(100));
                    match interrupt.wait(&state.socket, zmq::POLLOUT, &[], &mut [], poll) {
                        Ok(Wait::Ready) | Ok(Wait::TimedOut) => {}
                        Ok(Wait::Interrupted) => {
                            drop(guard);
                            gst::debug!(
                                CAT,
                                imp = self,
                                "unlocked while frame {index} waited for a puller"
                            );
                            self.obj().wait_preroll()?;
                            guard = self.state.lock().unwrap();
                        }
                        Err(e) => return Err(self.send_error(e)),
                    }
                }
                Err(zmq::Error::EINTR) => {}
                Err(e) => return Err(self.send_error(e)),
            }
        }
    }

    fn send_error(&self, e: zmq::Error) -> gst::FlowError {
        gst::element_imp_error!(
            self,
            gst::ResourceError::Write,
            (
                "Could not send a frame on {}: {e}",
                self.last_endpoint
                    .lock()
                    .unwrap()
                    .clone()
                    .unwrap_or_default()
            )
        );
        gst::FlowError::Error
    }
}

impl ObjectImpl for ZmqMsgpackSink {
    fn constructed(&self) {
        self.parent_constructed();
        eos_request::listen(&*self.obj());
    }

    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            let mut v = vec![
                glib::ParamSpecUInt::builder("port")
                    .nick("Port")
                    .blurb("TCP port to bind (tcp://*:PORT) or, with bind=false, to connect to on localhost; ignored when endpoint is set")
                    .maximum(65535)
                    .default_value(DEFAULT_PORT)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("endpoint")
                    .nick("Endpoint")
                    .blurb("Full ZeroMQ endpoint, e.g. tcp://*:5557, tcp://10.0.0.2:5557 or ipc:///tmp/frames; overrides port")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("bind")
                    .nick("Bind")
                    .blurb("Bind the endpoint (receivers connect to this sink); false connects to a receiver that binds")
                    .default_value(DEFAULT_BIND)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("socket-type", DEFAULT_SOCKET_TYPE)
                    .nick("Socket type")
                    .blurb("pub: never waits; a subscriber too slow for the stream loses its own frames, the others get every frame; push: waits for pullers (backpressure)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecInt::builder("quality")
                    .nick("JPEG quality")
                    .blurb("JPEG quality (1-100) for raw video input; JPEG input is sent as it is")
                    .minimum(1)
                    .maximum(100)
                    .default_value(DEFAULT_QUALITY)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecInt::builder("send-hwm")
                    .nick("Send high-water mark")
                    .blurb("Frames ZeroMQ queues per peer before pub drops for that peer or push waits (0 = no limit)")
                    .minimum(0)
                    .default_value(DEFAULT_SEND_HWM)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecInt::builder("linger-timeout")
                    .nick("Linger timeout")
                    .blurb("Milliseconds that stopping waits for queued frames to go out (-1 = until sent, 0 = discard)")
                    .minimum(-1)
                    .default_value(DEFAULT_LINGER_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("latent-dtype", DEFAULT_LATENT_DTYPE)
                    .nick("Latent dtype")
                    .blurb("Element type of latents on the wire (application/x-i2i-latent input): f32 as they come, f16 half the bytes; zmqmsgpacksrc gives float32 either way")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecString::builder("last-endpoint")
                    .nick("Last endpoint")
                    .blurb("The endpoint actually bound or connected (with the port ZeroMQ picked for tcp://HOST:*)")
                    .read_only()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("frames and bytes sent, dropped (sum of dropped-busy: refused by the socket as a whole, dropped-undelivered: push, given up when the end was requested and no puller took them, dropped-invalid: latent buffers whose size does not match their caps), no-subscriber (pub: sent while nobody subscribed), subscribers (pub: subscriptions now), refused (CURVE peers); a slow subscriber's own losses show as index gaps at that subscriber")
                    .read_only()
                    .build(),
            ];
            v.extend(ElementCurve::param_specs(
                "subscribers (binding) or receivers (binding push)",
            ));
            i2i_compat::param_specs(v, RENAMED)
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let name = self
            .deprecations
            .resolve(&*self.obj(), *CAT, RENAMED, pspec.name());
        if self.curve.set_property(name, value) {
            return;
        }
        let mut settings = self.settings.lock().unwrap();
        match name {
            "port" => settings.port = value.get().expect("type checked upstream"),
            "endpoint" => {
                settings.endpoint = value
                    .get::<Option<String>>()
                    .expect("type checked upstream")
                    .filter(|s| !s.is_empty())
            }
            "bind" => settings.bind = value.get().expect("type checked upstream"),
            "socket-type" => settings.socket_type = value.get().expect("type checked upstream"),
            "quality" => settings.quality = value.get().expect("type checked upstream"),
            "send-hwm" => settings.send_hwm = value.get().expect("type checked upstream"),
            "linger-timeout" => settings.linger_ms = value.get().expect("type checked upstream"),
            "latent-dtype" => settings.latent_dtype = value.get().expect("type checked upstream"),
            other => unreachable!("no writable property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let name = self
            .deprecations
            .resolve(&*self.obj(), *CAT, RENAMED, pspec.name());
        if let Some(v) = self.curve.property(name) {
            return v;
        }
        let settings = self.settings.lock().unwrap();
        match name {
            "port" => settings.port.to_value(),
            "endpoint" => settings.endpoint.to_value(),
            "bind" => settings.bind.to_value(),
            "socket-type" => settings.socket_type.to_value(),
            "quality" => settings.quality.to_value(),
            "send-hwm" => settings.send_hwm.to_value(),
            "linger-timeout" => settings.linger_ms.to_value(),
            "latent-dtype" => settings.latent_dtype.to_value(),
            "last-endpoint" => self.last_endpoint.lock().unwrap().to_value(),
            "stats" => {
                let s = *self.stats.lock().unwrap();
                let mut st = gst::Structure::builder("zmqmsgpacksink-stats")
                    .field("frames", s.frames)
                    .field("bytes", s.bytes)
                    .field("dropped", s.busy + s.undelivered + s.invalid)
                    .field("dropped-busy", s.busy)
                    .field("dropped-undelivered", s.undelivered)
                    .field("dropped-invalid", s.invalid)
                    .field("no-subscriber", s.no_subscriber)
                    .field("subscribers", s.subscribers)
                    .field("refused", self.curve.refused())
                    .build();
                i2i_compat::with_old_fields(&mut st, RENAMED_STATS);
                st.to_value()
            }
            other => unreachable!("no property {other}"),
        }
    }
}

impl GstObjectImpl for ZmqMsgpackSink {}

impl ElementImpl for ZmqMsgpackSink {
    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        self.deprecations.post_pending(&*self.obj());
        zmq_element::sink_change_state(self, transition)
    }

    fn send_event(&self, event: gst::Event) -> bool {
        self.eos_request.send_event(self, *CAT, event)
    }

    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "ZeroMQ msgpack frame sink",
                "Sink/Network",
                "Sends each frame as one ZeroMQ message, a msgpack array [timestamp_ms, index, jpg]; \
                 raw video is JPEG-encoded with libjpeg-turbo, JPEG input is sent as it is; \
                 latents (application/x-i2i-latent) go as [timestamp_ms, index, payload, meta]",
                "i2i developers",
            )
        });
        Some(&*METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static PAD_TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let mut caps = latent::jpeg_or_latent_caps();
            caps.get_mut().unwrap().append(
                gst_video::VideoCapsBuilder::new()
                    .format_list([
                        gst_video::VideoFormat::Rgb,
                        gst_video::VideoFormat::Rgbx,
                        gst_video::VideoFormat::Rgba,
                        gst_video::VideoFormat::Bgr,
                        gst_video::VideoFormat::Bgrx,
                        gst_video::VideoFormat::Bgra,
                        gst_video::VideoFormat::I420,
                        gst_video::VideoFormat::Nv12,
                        gst_video::VideoFormat::Gray8,
                    ])
                    .build(),
            );
            zmq_element::frames_pad_templates(gst::PadDirection::Sink, &caps)
        });
        PAD_TEMPLATES.as_ref()
    }
}

impl BaseSinkImpl for ZmqMsgpackSink {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        if self.state.lock().unwrap().is_some() {
            // Already started by change_state (zmq_element::start_before_base).
            return Ok(());
        }
        let settings = self.settings.lock().unwrap().clone();
        let endpoint = settings.effective_endpoint();
        let interrupt = Interrupt::new().map_err(|e| {
            gst::error_msg!(
                gst::ResourceError::OpenWrite,
                ("Could not create the wake-up socket pair: {e}")
            )
        })?;
        *self.interrupt.lock().unwrap() = Some(Arc::new(interrupt));

        let kind = match settings.socket_type {
            SinkSocketType::Pub => zmq::XPUB,
            SinkSocketType::Push => zmq::PUSH,
        };
        let options = zmq_endpoint::Options {
            endpoint: &endpoint,
            bind: settings.bind,
            linger_ms: settings.linger_ms,
            send_hwm: Some(settings.send_hwm),
            rcv_hwm: None,
            max_message_size: None,
            name: settings.socket_type_nick(),
            purpose: "",
            examples: zmq_endpoint::STREAM_EXAMPLES,
            peer: "receiver",
        };
        let (opened, ()) = zmq_element::open(
            kind,
            &options,
            gst::ResourceError::OpenWrite,
            self.obj().upcast_ref(),
            &self.curve,
            |_, socket| {
                if settings.socket_type == SinkSocketType::Pub {
                    set_xpub_verboser(socket).map_err(|e| ("set XPUB_VERBOSER on", e))?;
                }
                Ok(())
            },
            |_| false,
        )?;
        let zmq_endpoint::Opened {
            socket,
            context,
            endpoint: last,
        } = opened;
        gst::info!(
            CAT,
            imp = self,
            "{} {} socket on {last}",
            zmq_endpoint::done_verb(settings.bind),
            settings.socket_type_nick()
        );
        *self.last_endpoint.lock().unwrap() = Some(last);
        *self.stats.lock().unwrap() = Stats::default();
        self.eos_request.clear();
        *self.state.lock().unwrap() = Some(State {
            socket,
            _context: context,
            socket_type: settings.socket_type,
            input: None,
            encoder: None,
            msg: Vec::new(),
            wire: Vec::new(),
            count: 0,
            topics: HashMap::new(),
        });
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        self.curve.stop();
        // Dropping the state closes the socket and waits up to `linger` for queued frames.
        let state = self.state.lock().unwrap().take();
        drop(state);
        gst::debug!(
            CAT,
            imp = self,
            "stopped, {:?}",
            *self.stats.lock().unwrap()
        );
        Ok(())
    }

    fn set_caps(&self, caps: &gst::Caps) -> Result<(), gst::LoggableError> {
        let s = caps
            .structure(0)
            .ok_or_else(|| gst::loggable_error!(CAT, "Empty caps"))?;
        let input = if s.name() == "image/jpeg" {
            Input::Jpeg
        } else if s.name() == LATENT_CAPS_NAME {
            Input::Latent(latent::meta_from_caps(s, "zmqmsgpacksink").map_err(|e| {
                gst::element_imp_error!(self, gst::CoreError::Negotiation, ("{e}"));
                gst::loggable_error!(CAT, "{e}")
            })?)
        } else {
            let info = gst_video::VideoInfo::from_caps(caps)
                .map_err(|_| gst::loggable_error!(CAT, "Invalid video caps {caps}"))?;
            Input::Raw(info)
        };
        gst::debug!(CAT, imp = self, "caps {caps}");
        if let Some(state) = self.state.lock().unwrap().as_mut() {
            state.input = Some(input);
        }
        Ok(())
    }

    fn render(&self, buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        let options = {
            let settings = self.settings.lock().unwrap();
            (settings.quality, settings.latent_dtype)
        };
        let interrupt = self
            .interrupt
            .lock()
            .unwrap()
            .clone()
            .ok_or(gst::FlowError::Flushing)?;
        let mut guard = self.state.lock().unwrap();
        let state = guard.as_mut().ok_or(gst::FlowError::Flushing)?;

        let index = crate::frame_index::index_of(buffer).unwrap_or(state.count);
        state.count += 1;
        let timestamp_ms = protocol::ns_to_timestamp_ms(self.entry_unix_ns(buffer));
        if !self.pack(state, buffer, timestamp_ms, index, options)? {
            return Ok(gst::FlowSuccess::Ok);
        }
        let len = state.msg.len() as u64;

        match state.socket_type {
            SinkSocketType::Pub => {
                self.read_subscriptions(state);
                let listened = state.topics.keys().any(|t| state.msg.starts_with(t));
                match state.socket.send(&state.msg[..], zmq::DONTWAIT) {
                    Ok(()) => {
                        let mut stats = self.stats.lock().unwrap();
                        stats.frames += 1;
                        stats.bytes += len;
                        if !listened {
                            stats.no_subscriber += 1;
                        }
                    }
                    Err(zmq::Error::EAGAIN) => {
                        let dropped = {
                            let mut stats = self.stats.lock().unwrap();
                            stats.busy += 1;
                            stats.busy
                        };
                        gst::debug!(
                            CAT,
                            imp = self,
                            "frame {index} refused by the socket ({dropped} dropped)"
                        );
                    }
                    Err(e) => return Err(self.send_error(e)),
                }
            }
            SinkSocketType::Push => return self.push_send(guard, &interrupt, index, len),
        }
        Ok(gst::FlowSuccess::Ok)
    }

    fn unlock(&self) -> Result<(), gst::ErrorMessage> {
        if let Some(i) = self.interrupt.lock().unwrap().as_ref() {
            i.interrupt();
        }
        Ok(())
    }

    fn unlock_stop(&self) -> Result<(), gst::ErrorMessage> {
        if let Some(i) = self.interrupt.lock().unwrap().as_ref() {
            i.clear();
        }
        Ok(())
    }
}
