// SPDX-License-Identifier: MPL-2.0
//! `zmqmsgpacksrc`: a live source of `image/jpeg` frames received over ZeroMQ.
//!
//! Each message is `[timestamp_ms, index, jpg]` or a batch map (see [`i2i_core::protocol`]).
//! A frame becomes one buffer: offset = index and the frame index meta
//! ([`crate::frame_index`], which survives decoders), PTS = running time at arrival, and the
//! original timestamp as a `timestamp/x-unix` reference meta, so a `zmqmsgpacksink`
//! further down sends the original capture time on. The JPEG bytes are not copied: the
//! buffer shares the received ZeroMQ message.
//!
//! Latents come as the tensor form `[timestamp_ms, index, payload, meta]`
//! ([`i2i_core::tensor`]) and go out as `application/x-i2i-latent` float32 buffers (float16 on
//! the wire is widened), with caps built from each message's meta: a new meta sets new
//! caps. Their payload must match the meta (`prod(shape) * dtype size` bytes), the shape
//! be `[1, C, H, W]` (or NHWC) within `max-pixels` elements, the dtype float32 or float16.
//!
//! Bad input is dropped, counted in `stats` and reported as a warning on the bus; the
//! stream goes on. A message longer than `max-message-size` never reaches the element:
//! ZeroMQ (ZMQ_MAXMSGSIZE) refuses it by closing the connection, which the element sees
//! through a socket monitor and reports as a disconnect.
//!
//! `unlock()` wakes the blocking wait through a socket pair polled with the data socket
//! ([`crate::interrupt`]), so stopping never waits for the next message.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::base_src::CreateSuccess;
use gst_base::subclass::prelude::*;
use i2i_compat::{Alias, Deprecations};

use crate::frame_file::{self, FrameFileError};
use crate::frame_index;
use crate::interrupt::{Interrupt, Wait};
use crate::latent::{self, LatentDrop, LatentDrops, LatentPayload, LatentStream};
use crate::source_output::{self, Offered, SourceOutput};
use crate::zmq_element;
use i2i_core::curve::{self, ElementCurve};
use i2i_core::jpeg::{DEFAULT_MAX_PIXELS, JpegCheckError, jpeg_size};
use i2i_core::protocol::{self, Payload};
use i2i_core::rate_limit::RateLimit;
use i2i_core::tensor;
use i2i_core::zmq_endpoint;
use i2i_core::zmq_endpoint::ReceiveSocketType;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "zmqmsgpacksrc",
        gst::DebugColorFlags::empty(),
        Some("ZeroMQ msgpack frame source"),
    )
});

/// Renamed properties whose old names still work for one release (docs/properties.md).
pub(crate) const RENAMED: &[Alias] = &[Alias {
    old: "rcv-hwm",
    new: "receive-hwm",
}];

const DEFAULT_ENDPOINT: &str = "tcp://localhost:5557";
const DEFAULT_BIND: bool = false;
const DEFAULT_SOCKET_TYPE: ReceiveSocketType = ReceiveSocketType::Sub;
const DEFAULT_RCV_HWM: i32 = 10;

#[derive(Debug, Clone)]
struct Settings {
    endpoint: String,
    bind: bool,
    socket_type: ReceiveSocketType,
    max_message_size: i64,
    framerate: gst::Fraction,
    max_pixels: u64,
    frame_folder: Option<String>,
    rcv_hwm: i32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            endpoint: DEFAULT_ENDPOINT.into(),
            bind: DEFAULT_BIND,
            socket_type: DEFAULT_SOCKET_TYPE,
            max_message_size: source_output::DEFAULT_MAX_MESSAGE_SIZE,
            framerate: source_output::DEFAULT_FRAMERATE,
            max_pixels: DEFAULT_MAX_PIXELS,
            frame_folder: None,
            rcv_hwm: DEFAULT_RCV_HWM,
        }
    }
}

impl Settings {
    fn socket_type_nick(&self) -> &'static str {
        self.socket_type.nick()
    }
}

/// Why a frame or message was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DropReason {
    /// Not msgpack, or not the shape or types of a frame or batch message.
    Malformed,
    /// The bytes (or the file) are not a JPEG whose header decodes.
    NotJpeg,
    /// A batch path that cannot be read.
    MissingFile,
    /// A batch path to a file over max-message-size, or a frame over max-pixels.
    Oversize,
    /// A batch path outside frame-folder (or none set), or not a regular file.
    RefusedPath,
    /// A latent refused for a latent's own reason (payload size, dtype, shape, meta).
    Latent(LatentDrop),
    /// A JPEG where downstream takes only latents, or the reverse.
    Kind,
}

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    frames: u64,
    bytes: u64,
    malformed: u64,
    not_jpeg: u64,
    missing_file: u64,
    refused_path: u64,
    oversize: u64,
    latent: LatentDrops,
    latents: u64,
    /// Frames of a kind downstream does not take.
    kind: u64,
    disconnects: u64,
}

impl Stats {
    fn dropped(&self) -> u64 {
        self.malformed
            + self.not_jpeg
            + self.missing_file
            + self.oversize
            + self.refused_path
            + self.latent.total()
            + self.kind
    }

    fn count(&mut self, why: DropReason) {
        match why {
            DropReason::Malformed => self.malformed += 1,
            DropReason::NotJpeg => self.not_jpeg += 1,
            DropReason::MissingFile => self.missing_file += 1,
            DropReason::Oversize => self.oversize += 1,
            DropReason::RefusedPath => self.refused_path += 1,
            DropReason::Kind => self.kind += 1,
            DropReason::Latent(why) => {
                self.latent.count(why);
            }
        }
    }
}

/// A received message as the backing store of the buffers cut from it.
struct MessageBytes(zmq::Message);

impl AsRef<[u8]> for MessageBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The caps a pending buffer needs.
enum Kind {
    /// A JPEG of this size.
    Jpeg((usize, usize)),
    /// Latents with these caps.
    Latent(gst::Caps),
}

struct Pending {
    buffer: gst::Buffer,
    kind: Kind,
}

/// Where the JPEG of a checked frame is.
enum Jpeg {
    InMessage(Range<usize>),
    File(Vec<u8>),
}

struct Checked {
    timestamp_ms: i64,
    index: u64,
    jpeg: Jpeg,
    size: (usize, usize),
}

/// Something to report once the state lock is released.
enum Report {
    Dropped(DropReason, String),
    Disconnected(String),
}

struct State {
    // Field order is drop order: sockets close before the context terminates.
    monitor: Option<zmq::Socket>,
    socket: zmq::Socket,
    _context: zmq::Context,
    max_pixels: u64,
    frame_folder: Option<std::path::PathBuf>,
    pending: VecDeque<Pending>,
    max_message_size: i64,
    last_pts: Option<gst::ClockTime>,
    discont: bool,
    /// Channels, layout and scaling factor of the first latents received.
    latent_stream: Option<LatentStream>,
}

impl State {
    /// Stamps a buffer going out (see [`source_output::stamp`]) with `pts`, never earlier
    /// than the one before (a batch spread past the next arrival), and DISCONT on the first
    /// one after a gap.
    fn stamp(
        &mut self,
        b: &mut gst::BufferRef,
        index: u64,
        pts: Option<gst::ClockTime>,
        duration: Option<gst::ClockTime>,
        timestamp_ms: i64,
    ) {
        let pts = match (pts, self.last_pts) {
            (Some(p), Some(last)) if p < last => Some(last),
            (p, _) => p,
        };
        if pts.is_some() {
            self.last_pts = pts;
        }
        source_output::stamp(b, index, pts, duration, timestamp_ms);
        if self.discont {
            b.set_flags(gst::BufferFlags::DISCONT);
            self.discont = false;
        }
    }
}

#[derive(Default)]
pub struct ZmqMsgpackSrc {
    curve: ElementCurve,
    deprecations: Deprecations,
    settings: Mutex<Settings>,
    state: Mutex<Option<State>>,
    stats: Mutex<Stats>,
    last_endpoint: Mutex<Option<String>>,
    output: Mutex<SourceOutput>,
    warn_limit: Mutex<RateLimit>,
    interrupt: Mutex<Option<Arc<Interrupt>>>,
}

#[glib::object_subclass]
impl ObjectSubclass for ZmqMsgpackSrc {
    const NAME: &'static str = "GstZmqMsgpackSrc";
    type Type = super::ZmqMsgpackSrc;
    type ParentType = gst_base::PushSrc;
}

fn drop_reason(e: &JpegCheckError) -> DropReason {
    match e {
        JpegCheckError::NotJpeg(_) => DropReason::NotJpeg,
        JpegCheckError::TooLarge(_) => DropReason::Oversize,
    }
}

/// Reads a JPEG file named in a batch message (see [`frame_file`]).
fn read_frame_file(
    path: &str,
    folder: Option<&std::path::Path>,
    limit: u64,
) -> Result<Vec<u8>, (DropReason, String)> {
    frame_file::read(path, folder, limit).map_err(|e| match e {
        FrameFileError::Refused(t) => (DropReason::RefusedPath, t),
        FrameFileError::Missing(t) => (DropReason::MissingFile, t),
        FrameFileError::Oversize(t) => (DropReason::Oversize, t),
    })
}

impl ZmqMsgpackSrc {
    /// Checks one tensor message ([`latent::check`]) and makes it a pending latent buffer.
    fn handle_tensor(&self, state: &mut State, msg: zmq::Message, reports: &mut Vec<Report>) {
        let arrival = source_output::running_time_now(&*self.obj());
        let (framerate, duration) = {
            let out = self.output.lock().unwrap();
            (out.framerate(), out.duration())
        };
        let checked = latent::check(&msg, state.max_pixels, framerate, &mut state.latent_stream)
            .map(|l| {
                let data = match l.payload {
                    LatentPayload::InMessage(p) => protocol::range_in(&msg, p).ok_or(p.to_vec()),
                    LatentPayload::Converted(v) => Err(v),
                };
                (l.index, l.timestamp_ms, l.caps, data)
            });
        let (index, timestamp_ms, caps, data) = match checked {
            Ok(c) => c,
            Err((why, text)) => {
                let why = match why {
                    LatentDrop::Malformed => DropReason::Malformed,
                    LatentDrop::Oversize => DropReason::Oversize,
                    why => DropReason::Latent(why),
                };
                reports.push(Report::Dropped(why, text));
                return;
            }
        };
        let mut buffer = match data {
            // The float32 payload as it is in the message: shared, not copied.
            Ok(r) => {
                let mut b = gst::Buffer::new();
                let mem = gst::Memory::from_slice(MessageBytes(msg)).share(r);
                b.get_mut().unwrap().append_memory(mem);
                b
            }
            Err(v) => gst::Buffer::from_mut_slice(v),
        };
        let bytes = buffer.size() as u64;
        {
            state.stamp(
                buffer.get_mut().unwrap(),
                index,
                arrival,
                duration,
                timestamp_ms,
            );
        }
        state.pending.push_back(Pending {
            buffer,
            kind: Kind::Latent(caps),
        });
        let mut stats = self.stats.lock().unwrap();
        stats.frames += 1;
        stats.latents += 1;
        stats.bytes += bytes;
    }

    /// Turns one received message into pending buffers; problems go to `reports`.
    fn handle_message(&self, state: &mut State, msg: zmq::Message, reports: &mut Vec<Report>) {
        if tensor::is_tensor_message(&msg) {
            self.handle_tensor(state, msg, reports);
            return;
        }
        let arrival = source_output::running_time_now(&*self.obj());
        let limit = u64::try_from(state.max_message_size).unwrap_or(u64::MAX);
        let mut checked = Vec::new();
        match protocol::decode(&msg) {
            Err(e) => {
                reports.push(Report::Dropped(
                    DropReason::Malformed,
                    format!("Dropped a message of {} bytes: {e}", msg.len()),
                ));
                return;
            }
            Ok(frames) => {
                let batch = frames.len() > 1;
                for f in frames {
                    let what = if batch {
                        format!("frame {} of a batch message", f.index)
                    } else {
                        format!("frame {}", f.index)
                    };
                    let (jpeg, size) = match &f.jpeg {
                        Payload::Bytes(b) => match jpeg_size(b, state.max_pixels) {
                            Ok(size) => match protocol::range_in(&msg, b) {
                                Some(r) => (Jpeg::InMessage(r), size),
                                None => (Jpeg::File(b.to_vec()), size),
                            },
                            Err(e) => {
                                reports.push(Report::Dropped(
                                    drop_reason(&e),
                                    format!("Dropped {what}: {e}"),
                                ));
                                continue;
                            }
                        },
                        Payload::Path(p) => {
                            let data =
                                match read_frame_file(p, state.frame_folder.as_deref(), limit) {
                                    Ok(d) => d,
                                    Err((why, e)) => {
                                        reports.push(Report::Dropped(
                                            why,
                                            format!("Dropped {what}: {e}"),
                                        ));
                                        continue;
                                    }
                                };
                            match jpeg_size(&data, state.max_pixels) {
                                Ok(size) => (Jpeg::File(data), size),
                                Err(e) => {
                                    reports.push(Report::Dropped(
                                        drop_reason(&e),
                                        format!("Dropped {what}: file {p:?}: {e}"),
                                    ));
                                    continue;
                                }
                            }
                        }
                    };
                    checked.push(Checked {
                        timestamp_ms: f.timestamp_ms,
                        index: f.index,
                        jpeg,
                        size,
                    });
                }
            }
        }
        if checked.is_empty() {
            return;
        }

        let shared = checked
            .iter()
            .any(|c| matches!(c.jpeg, Jpeg::InMessage(_)))
            .then(|| gst::Memory::from_slice(MessageBytes(msg)));
        let duration = self.output.lock().unwrap().duration();
        let mut bytes = 0u64;
        let n = checked.len() as u64;
        for (k, c) in checked.into_iter().enumerate() {
            let mut buffer = match c.jpeg {
                Jpeg::InMessage(r) => {
                    let mut b = gst::Buffer::new();
                    let mem = shared.as_ref().expect("made above").share(r);
                    b.get_mut().unwrap().append_memory(mem);
                    b
                }
                Jpeg::File(v) => gst::Buffer::from_mut_slice(v),
            };
            bytes += buffer.size() as u64;
            {
                // Frames of one batch arrive together: spread them by the frame duration.
                let pts = arrival.map(|a| a + duration.unwrap_or(gst::ClockTime::ZERO) * k as u64);
                state.stamp(
                    buffer.get_mut().unwrap(),
                    c.index,
                    pts,
                    duration,
                    c.timestamp_ms,
                );
            }
            state.pending.push_back(Pending {
                buffer,
                kind: Kind::Jpeg(c.size),
            });
        }
        let mut stats = self.stats.lock().unwrap();
        stats.frames += n;
        stats.bytes += bytes;
    }

    /// A monitor of `socket`: it tells about connections ZeroMQ closes (e.g. for an
    /// oversize message) and failed CURVE handshakes. `None` (logged) when it cannot be set.
    fn monitor(&self, context: &zmq::Context, socket: &zmq::Socket) -> Option<zmq::Socket> {
        let monitor_endpoint = format!(
            "inproc://zmqmsgpacksrc-monitor-{}",
            MONITOR_ID.fetch_add(1, Ordering::Relaxed)
        );
        let monitor = socket
            .monitor(
                &monitor_endpoint,
                (zmq::SocketEvent::DISCONNECTED as u16
                    | zmq::SocketEvent::CONNECTED as u16
                    | zmq::SocketEvent::ACCEPTED as u16
                    | curve::HANDSHAKE_EVENTS) as i32,
            )
            .and_then(|()| {
                let m = context.socket(zmq::PAIR)?;
                m.set_linger(0)?;
                m.connect(&monitor_endpoint)?;
                Ok(m)
            });
        match monitor {
            Ok(m) => Some(m),
            Err(e) => {
                gst::warning!(
                    CAT,
                    imp = self,
                    "no socket monitor, disconnects are not counted: {e}"
                );
                None
            }
        }
    }

    /// Reads what the socket monitor has to say.
    fn handle_monitor(&self, state: &mut State, reports: &mut Vec<Report>) {
        let Some(monitor) = state.monitor.as_ref() else {
            return;
        };
        while let Some((event, value, address)) = curve::read_monitor_event(monitor) {
            if event & curve::HANDSHAKE_EVENTS != 0 {
                self.curve.handshake_event(event, value, &address);
                continue;
            }
            match zmq::SocketEvent::from_raw(event) {
                zmq::SocketEvent::DISCONNECTED => {
                    self.stats.lock().unwrap().disconnects += 1;
                    reports.push(Report::Disconnected(address));
                }
                other => gst::debug!(CAT, imp = self, "socket event {other:?} on {address}"),
            }
        }
    }

    fn post(&self, reports: Vec<Report>, max_message_size: i64) {
        for r in reports {
            match r {
                Report::Dropped(why, text) => {
                    self.stats.lock().unwrap().count(why);
                    gst::warning!(CAT, imp = self, "{text}");
                    let Some(text) = self.warn_limit.lock().unwrap().message(text) else {
                        continue;
                    };
                    match why {
                        DropReason::RefusedPath => {
                            gst::element_imp_warning!(
                                self,
                                gst::ResourceError::OpenRead,
                                ("{text}")
                            )
                        }
                        DropReason::MissingFile => {
                            gst::element_imp_warning!(
                                self,
                                gst::ResourceError::NotFound,
                                ("{text}")
                            )
                        }
                        DropReason::Oversize => {
                            gst::element_imp_warning!(
                                self,
                                gst::ResourceError::NoSpaceLeft,
                                ("{text}")
                            )
                        }
                        DropReason::Malformed | DropReason::NotJpeg | DropReason::Latent(_) => {
                            gst::element_imp_warning!(self, gst::StreamError::Decode, ("{text}"))
                        }
                        DropReason::Kind => {
                            gst::element_imp_warning!(self, gst::StreamError::Format, ("{text}"))
                        }
                    }
                }
                Report::Disconnected(address) => {
                    let text = format!(
                        "A connection on {address} closed: the peer went away, or sent a message \
                         over max-message-size ({max_message_size} bytes), which ZeroMQ refuses by \
                         closing the connection"
                    );
                    // Every sender that exits closes its connection: a disconnect is counted
                    // in stats and logged, not a warning.
                    gst::info!(CAT, imp = self, "{text}");
                }
            }
        }
    }
}

static MONITOR_ID: AtomicU64 = AtomicU64::new(0);

impl ObjectImpl for ZmqMsgpackSrc {
    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        obj.set_live(true);
        obj.set_format(gst::Format::Time);
        obj.set_do_timestamp(false);
    }

    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            let mut v = vec![
                glib::ParamSpecString::builder("endpoint")
                    .nick("Endpoint")
                    .blurb("ZeroMQ endpoint to connect to (or to bind, with bind=true), e.g. tcp://10.0.0.2:5557 or tcp://*:5557")
                    .default_value(Some(DEFAULT_ENDPOINT))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("bind")
                    .nick("Bind")
                    .blurb("Bind the endpoint (senders connect to this source) instead of connecting to it")
                    .default_value(DEFAULT_BIND)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("socket-type", DEFAULT_SOCKET_TYPE)
                    .nick("Socket type")
                    .blurb("sub: subscribe to a zmqmsgpacksink socket-type=pub; pull: pull from socket-type=push")
                    .mutable_ready()
                    .build(),
                source_output::max_message_size_pspec("message (and batch JPEG file)"),
                source_output::framerate_pspec(),
                source_output::max_pixels_pspec(),
                frame_file::frame_folder_pspec(),
                glib::ParamSpecInt::builder("receive-hwm")
                    .nick("Receive high-water mark")
                    .blurb("Messages ZeroMQ queues before the sender waits (push) or drops (pub) (0 = no limit)")
                    .minimum(0)
                    .default_value(DEFAULT_RCV_HWM)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("last-endpoint")
                    .nick("Last endpoint")
                    .blurb("The endpoint actually bound or connected (with the port ZeroMQ picked for tcp://HOST:*)")
                    .read_only()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("frames (of which latents) and bytes received, dropped (sum of dropped-malformed, dropped-not-jpeg, dropped-missing-file, dropped-oversize (JPEG or latent image over max-pixels), dropped-refused-path, dropped-latent-size (payload not matching its meta: truncated or wrong meta), dropped-latent-dtype (not float32 or float16), dropped-latent-shape (not one [1, C, H, W] frame, or over max-pixels elements), dropped-latent-meta (image size not 8 x the latent size, or channels, layout or scaling factor other than the stream's first latents), dropped-kind (a JPEG where downstream takes only latents, or latents where it takes only JPEG)) and disconnects")
                    .read_only()
                    .build(),
            ];
            v.extend(ElementCurve::param_specs("senders"));
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
            "endpoint" => settings.endpoint = zmq_element::endpoint_or(value, DEFAULT_ENDPOINT),
            "bind" => settings.bind = value.get().expect("type checked upstream"),
            "socket-type" => settings.socket_type = value.get().expect("type checked upstream"),
            "max-message-size" => {
                settings.max_message_size = value.get().expect("type checked upstream")
            }
            "framerate" => settings.framerate = value.get().expect("type checked upstream"),
            "max-pixels" => settings.max_pixels = value.get().expect("type checked upstream"),
            "frame-folder" => {
                settings.frame_folder = value
                    .get::<Option<String>>()
                    .expect("type checked upstream")
                    .filter(|s| !s.is_empty())
            }
            "receive-hwm" => settings.rcv_hwm = value.get().expect("type checked upstream"),
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
            "endpoint" => settings.endpoint.to_value(),
            "bind" => settings.bind.to_value(),
            "socket-type" => settings.socket_type.to_value(),
            "max-message-size" => settings.max_message_size.to_value(),
            "framerate" => settings.framerate.to_value(),
            "max-pixels" => settings.max_pixels.to_value(),
            "frame-folder" => settings.frame_folder.to_value(),
            "receive-hwm" => settings.rcv_hwm.to_value(),
            "last-endpoint" => self.last_endpoint.lock().unwrap().to_value(),
            "stats" => {
                let s = *self.stats.lock().unwrap();
                let b = gst::Structure::builder("zmqmsgpacksrc-stats")
                    .field("frames", s.frames)
                    .field("bytes", s.bytes)
                    .field("dropped", s.dropped())
                    .field("dropped-malformed", s.malformed)
                    .field("dropped-not-jpeg", s.not_jpeg)
                    .field("dropped-missing-file", s.missing_file)
                    .field("dropped-oversize", s.oversize)
                    .field("dropped-refused-path", s.refused_path)
                    .field("dropped-kind", s.kind);
                s.latent
                    .fields(b)
                    .field("latents", s.latents)
                    .field("disconnects", s.disconnects)
                    .field("refused", self.curve.refused())
                    .build()
                    .to_value()
            }
            other => unreachable!("no property {other}"),
        }
    }
}

impl GstObjectImpl for ZmqMsgpackSrc {}

impl ElementImpl for ZmqMsgpackSrc {
    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        self.deprecations.post_pending(&*self.obj());
        zmq_element::source_change_state(self, transition)
    }

    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "ZeroMQ msgpack frame source",
                "Source/Network",
                "Receives frames as ZeroMQ messages [timestamp_ms, index, jpg] (or batch maps with \
                 timestamp, index, frames, indices) and outputs one image/jpeg buffer per frame, \
                 the original timestamp kept as a timestamp/x-unix reference meta; latents \
                 [timestamp_ms, index, payload, meta] come out as application/x-i2i-latent",
                "i2i developers",
            )
        });
        Some(&*METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static PAD_TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            zmq_element::frames_pad_templates(
                gst::PadDirection::Src,
                &latent::jpeg_or_latent_caps(),
            )
        });
        PAD_TEMPLATES.as_ref()
    }
}

impl BaseSrcImpl for ZmqMsgpackSrc {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        if self.state.lock().unwrap().is_some() {
            // Already started by change_state (zmq_element::start_before_base).
            return Ok(());
        }
        let settings = self.settings.lock().unwrap().clone();
        let endpoint = settings.endpoint.clone();
        let interrupt = Interrupt::new().map_err(|e| {
            gst::error_msg!(
                gst::ResourceError::OpenRead,
                ("Could not create the wake-up socket pair: {e}")
            )
        })?;
        *self.interrupt.lock().unwrap() = Some(Arc::new(interrupt));

        let kind = settings.socket_type.zmq_type();
        let options = zmq_endpoint::Options {
            endpoint: &endpoint,
            bind: settings.bind,
            linger_ms: 0,
            send_hwm: None,
            rcv_hwm: Some(settings.rcv_hwm),
            max_message_size: Some(settings.max_message_size),
            name: settings.socket_type_nick(),
            purpose: "",
            examples: zmq_endpoint::STREAM_EXAMPLES,
            peer: "sender",
        };
        let (opened, monitor) = zmq_element::open(
            kind,
            &options,
            gst::ResourceError::OpenRead,
            self.obj().upcast_ref(),
            &self.curve,
            |context, socket| {
                if settings.socket_type == ReceiveSocketType::Sub {
                    socket.set_subscribe(b"").map_err(|e| ("subscribe", e))?;
                }
                Ok(self.monitor(context, socket))
            },
            Option::is_some,
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
        self.output.lock().unwrap().reset(settings.framerate);
        *self.state.lock().unwrap() = Some(State {
            monitor,
            socket,
            _context: context,
            max_pixels: settings.max_pixels,
            frame_folder: settings.frame_folder.clone().map(std::path::PathBuf::from),
            pending: VecDeque::new(),
            max_message_size: settings.max_message_size,
            last_pts: None,
            discont: true,
            latent_stream: None,
        });
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        self.curve.stop();
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

    fn is_seekable(&self) -> bool {
        false
    }

    fn negotiate(&self) -> Result<(), gst::LoggableError> {
        source_output::negotiate(&*self.obj(), &self.output)
    }

    fn query(&self, query: &mut gst::QueryRef) -> bool {
        match query.view_mut() {
            gst::QueryViewMut::Latency(q) => {
                // Buffers are timestamped when they arrive and pushed at once.
                q.set(true, gst::ClockTime::ZERO, gst::ClockTime::NONE);
                true
            }
            _ => BaseSrcImplExt::parent_query(self, query),
        }
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

impl PushSrcImpl for ZmqMsgpackSrc {
    fn create(
        &self,
        _buffer: Option<&mut gst::BufferRef>,
    ) -> Result<CreateSuccess, gst::FlowError> {
        let interrupt = self
            .interrupt
            .lock()
            .unwrap()
            .clone()
            .ok_or(gst::FlowError::Flushing)?;
        loop {
            let mut reports = Vec::new();
            let mut guard = self.state.lock().unwrap();
            let state = guard.as_mut().ok_or(gst::FlowError::Flushing)?;
            let max_message_size = state.max_message_size;

            if let Some(p) = state.pending.pop_front() {
                drop(guard);
                let (offered, what) = match p.kind {
                    Kind::Jpeg(size) => (
                        source_output::ensure_caps(&*self.obj(), &self.output, size)?,
                        "JPEG frame",
                    ),
                    Kind::Latent(caps) => (
                        source_output::ensure_latent_caps(&*self.obj(), &self.output, caps)?,
                        "latent frame",
                    ),
                };
                if let Offered::WrongKind(why) = offered {
                    let index = frame_index::index_of(&p.buffer)
                        .map(|i| format!(" {i}"))
                        .unwrap_or_default();
                    let text =
                        format!("Dropped {what}{index}: {why} (counted in stats dropped-kind)");
                    self.post(
                        vec![Report::Dropped(DropReason::Kind, text)],
                        max_message_size,
                    );
                    continue;
                }
                return Ok(CreateSuccess::NewBuffer(p.buffer));
            }
            if interrupt.is_interrupted() {
                return Err(gst::FlowError::Flushing);
            }

            let mut msg = zmq::Message::new();
            match state.socket.recv(&mut msg, zmq::DONTWAIT) {
                Ok(()) => {
                    if msg.get_more() {
                        // Multipart messages are not frames: drain the rest and drop them.
                        let mut parts = 1;
                        let mut part = zmq::Message::new();
                        while state.socket.get_rcvmore().unwrap_or(false)
                            && state.socket.recv(&mut part, zmq::DONTWAIT).is_ok()
                        {
                            parts += 1;
                        }
                        reports.push(Report::Dropped(
                            DropReason::Malformed,
                            format!("Dropped a multipart message of {parts} parts: a frame is one msgpack message"),
                        ));
                    } else {
                        self.handle_message(state, msg, &mut reports);
                    }
                }
                Err(zmq::Error::EAGAIN) => {
                    let monitor = state.monitor.as_ref();
                    let extra: Vec<&zmq::Socket> = monitor.into_iter().collect();
                    let mut extra_ready = [false];
                    let n = extra.len();
                    match interrupt.wait(
                        &state.socket,
                        zmq::POLLIN,
                        &extra,
                        &mut extra_ready[..n],
                        None,
                    ) {
                        Ok(Wait::Interrupted) => return Err(gst::FlowError::Flushing),
                        Ok(Wait::Ready) | Ok(Wait::TimedOut) => {
                            if extra_ready[0] {
                                self.handle_monitor(state, &mut reports);
                            }
                        }
                        Err(e) => {
                            gst::element_imp_error!(
                                self,
                                gst::ResourceError::Read,
                                ("Waiting for messages failed: {e}")
                            );
                            return Err(gst::FlowError::Error);
                        }
                    }
                }
                Err(zmq::Error::EINTR) => {}
                Err(e) => {
                    let endpoint = self
                        .last_endpoint
                        .lock()
                        .unwrap()
                        .clone()
                        .unwrap_or_default();
                    gst::element_imp_error!(
                        self,
                        gst::ResourceError::Read,
                        ("Could not receive on {endpoint}: {e}")
                    );
                    return Err(gst::FlowError::Error);
                }
            }
            drop(guard);
            self.post(reports, max_message_size);
        }
    }
}
