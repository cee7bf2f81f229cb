// SPDX-License-Identifier: MPL-2.0
//! `i2iwhepsink`: a bin around gst-plugins-rs's `whepserversink` with one always `sink` pad, so
//! `... ! i2itransform ! i2iwhepsink` serves the transformed video to browsers over WHEP.
//!
//! What it adds to `whepserversink`:
//! - `playout-delay`: river's fixed timestamp offset on the output side. A `clocksync` in front
//!   of the WHEP sink releases each frame at its capture running time plus the delay, so the
//!   viewers get the frames with their original spacing and one fixed, known delay; a frame
//!   whose transform took longer than the offset goes out at once (late, counted by clocksync's
//!   QoS messages). A queue in front of it holds the frames in flight meanwhile (up to the
//!   offset plus 200 ms), so the transform's output is not held back (a full queue holds it,
//!   and the transform counts the frames it then drops as late);
//! - 127.0.0.1 (or the `local-addresses` list) as an ICE host candidate, which libnice never
//!   offers by itself, so viewers on the same machine connect;
//! - no STUN server by default (a rig with no internet answers at once);
//! - its own HTTP front (`endpoint.rs`), listening from READY (not only once frames flow):
//!   clear refusals (malformed SDP, no video, unsupported codec, unknown resource) in the
//!   response and as bus warnings, CORS for browser pages;
//! - element messages `i2iwhepsink` with `event=viewer-added` / `viewer-removed` (and
//!   `encoder-started` for each per-viewer encoder), the number of `viewers` and `encoders`.
//!
//! - `codec`: the video is encoded once, here, in front of `whepserversink` (`vp8`, the
//!   default, or `h264`), and webrtcsink only payloads the same encoded frames for every viewer:
//!   each viewer is fed through its own leaky queue (gstreamer-utils' StreamProducer), so a
//!   viewer that falls behind drops frames only for itself and waits for the next keyframe,
//!   which it asks the one encoder for (as does a viewer that joins). `per-viewer` hands raw
//!   video to webrtcsink instead: each viewer gets its own encoder, in the codec its offer
//!   prefers, with its own congestion control (webrtcsink's `homegrown` heuristic), at the cost
//!   of one encoder per viewer;
//! - flagged a sink from the start (webrtcsink becomes one only once its inner sinks exist,
//!   after the bin took it in, so the flag would not reach this bin): the pipeline then waits
//!   for its EOS, and `gst-launch-1.0 -e` and applications that drain before stopping end
//!   cleanly;
//! - no latency of its own in the pipeline's latency query, and upstream's is not waited for
//!   (viewers have jitter buffers; webrtcsink would hold each frame for all of it);
//! - the `encoders` property and field in the viewer messages: how many video encoders run for
//!   the viewers (1 when encoding once, one per viewer otherwise).

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use i2i_compat::{Alias, Deprecations};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use crate::endpoint::{self, Endpoint, Kind, Limits, Server};
use crate::offer::Accepts;
use i2i_core::rate_limit::RateLimit;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "i2iwhepsink",
        gst::DebugColorFlags::empty(),
        Some("WHEP endpoint for browser viewers"),
    )
});

const DEFAULT_TS_OFFSET: u64 = 0;
const MAX_PLAYOUT_DELAY_MS: u32 = 10_000;
const MAX_TS_OFFSET: u64 = MAX_PLAYOUT_DELAY_MS as u64 * gst::ClockTime::MSECOND.nseconds();

/// Renamed properties whose old names still work for one release (docs/properties.md):
/// `ts-offset` (ns) is `playout-delay` (ms), its own ParamSpec for its unit.
pub(crate) const RENAMED: &[Alias] = &[Alias {
    old: "ts-offset",
    new: "playout-delay",
}];
const DEFAULT_BITRATE: u32 = 2000;
const MIN_BITRATE: u32 = 100;
const MAX_BITRATE: u32 = 50_000;
/// Viewers served at once (each holds a webrtcbin: about 8 threads and 15 descriptors).
const DEFAULT_MAX_VIEWERS: u32 = 10;
/// Viewers answered but not connected yet.
const DEFAULT_MAX_PENDING: u32 = 4;
/// Milliseconds a viewer may take to connect after its answer.
const DEFAULT_CONNECT_TIMEOUT: u32 = 5_000;
/// How long a viewer's POST waits for its answer (ICE gathering takes a second at most).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// Frames between keyframes of the shared encoder: a viewer that lost packets asks for one
/// (PLI) anyway; this bounds the wait when that request is lost too.
const KEYFRAME_INTERVAL: u32 = 60;

/// How the viewers' video is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, glib::Enum, Default)]
#[repr(u32)]
#[enum_type(name = "GstI2iWhepCodec")]
pub enum Codec {
    #[enum_value(name = "H264, encoded once for all viewers", nick = "h264")]
    H264 = 0,
    /// The default: Chromium shows VP8 about 30 ms sooner than H264 here (webrtc.md).
    #[default]
    #[enum_value(name = "VP8, encoded once for all viewers", nick = "vp8")]
    Vp8 = 1,
    #[enum_value(
        name = "Per viewer: one encoder per viewer, in the codec its offer prefers",
        nick = "per-viewer"
    )]
    PerViewer = 2,
}

impl Codec {
    /// What the endpoint takes from viewers' offers with this setting.
    fn accepts(self) -> Accepts {
        match self {
            Codec::H264 => Accepts {
                codecs: &["H264"],
                hint: Some(
                    "the video is encoded once in H264 (i2iwhepsink codec=h264); set codec=vp8 or codec=per-viewer for other viewers",
                ),
                any_h264_level: true,
            },
            Codec::Vp8 => Accepts {
                codecs: &["VP8"],
                hint: Some(
                    "the video is encoded once in VP8 (i2iwhepsink codec=vp8); set codec=h264 or codec=per-viewer for other viewers",
                ),
                any_h264_level: false,
            },
            Codec::PerViewer => Accepts::ALL,
        }
    }
}

#[derive(Debug, Clone)]
struct Settings {
    endpoint: endpoint::EndpointSettings,
    ts_offset: u64,
    codec: Codec,
    bitrate: u32,
    max_viewers: u32,
    max_pending: u32,
    connect_timeout: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            endpoint: endpoint::EndpointSettings::new(Kind::Whep),
            ts_offset: DEFAULT_TS_OFFSET,
            codec: Codec::default(),
            bitrate: DEFAULT_BITRATE,
            max_viewers: DEFAULT_MAX_VIEWERS,
            max_pending: DEFAULT_MAX_PENDING,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

/// The elements built at NULL -> READY from the settings, removed again at READY -> NULL.
struct Chain {
    inner: gst::Element,
    hold: gst::Element,
    clocksync: gst::Element,
    /// `videoconvert ! encoder ! capsfilter` when encoding once.
    encoding: Vec<gst::Element>,
    encoder: Option<gst::Element>,
}

/// Viewers and the encoders that run for them (`per-viewer`: counted from webrtcsink's
/// `encoder-setup`, per viewer).
#[derive(Default)]
struct Viewers {
    count: i64,
    encoders: std::collections::BTreeMap<String, u32>,
}

#[derive(Default)]
pub struct WhepSink {
    deprecations: Deprecations,
    settings: Mutex<Settings>,
    chain: Mutex<Option<Chain>>,
    ghost: Mutex<Option<gst::GhostPad>>,
    viewers: Mutex<Viewers>,
    server: endpoint::Running,
    warnings: Mutex<RateLimit>,
    /// True once webrtcsink has probed its codecs on the first frames (it then starts its
    /// signaller): the endpoint holds offers until then.
    ready: tokio::sync::watch::Sender<bool>,
}

/// What the HTTP front tells the element.
struct Events(glib::WeakRef<super::WhepSink>);

impl endpoint::Events for Events {
    fn warn(&self, what: &str) {
        if let Some(obj) = self.0.upgrade() {
            let imp = obj.imp();
            let Some(text) = imp
                .warnings
                .lock()
                .unwrap()
                .message(format!("i2iwhepsink: {what}"))
            else {
                return;
            };
            gst::element_imp_warning!(imp, gst::ResourceError::Read, ("{text}"));
        }
    }

    fn session(&self, id: &str, started: bool) {
        if let Some(obj) = self.0.upgrade() {
            gst::debug!(
                CAT,
                obj = obj,
                "viewer {id} {}",
                if started { "started" } else { "ended" }
            );
        }
    }
}

impl WhepSink {
    /// Warns once per element for an old property name (`ts-offset`, whose unit changed,
    /// is handled by the callers).
    fn warn_renamed(&self, name: &str) {
        if let Some(a) = RENAMED.iter().find(|a| a.old == name) {
            let instead = format!("use {} (ms)", a.new);
            self.deprecations
                .warn_once(&*self.obj(), *CAT, a.old, &instead);
        }
    }

    /// Video encoders running for the viewers now.
    fn encoders(&self) -> u32 {
        let once = self
            .chain
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|c| c.encoder.is_some());
        if once {
            1
        } else {
            self.viewers.lock().unwrap().encoders.values().sum()
        }
    }

    /// A per-viewer encoder was made for `viewer` (codec=per-viewer).
    fn encoder_started(&self, viewer: &str) {
        *self
            .viewers
            .lock()
            .unwrap()
            .encoders
            .entry(viewer.to_owned())
            .or_default() += 1;
        self.post("encoder-started", viewer, 0);
    }

    fn post(&self, event: &str, viewer: &str, delta: i64) {
        let viewers = {
            let mut v = self.viewers.lock().unwrap();
            v.count = (v.count + delta).max(0);
            if delta < 0 {
                v.encoders.remove(viewer);
            }
            v.count
        };
        let s = gst::Structure::builder("i2iwhepsink")
            .field("event", event)
            .field("viewer", viewer)
            .field("viewers", viewers)
            .field("encoders", self.encoders())
            .build();
        let _ = self
            .obj()
            .post_message(gst::message::Element::builder(s).src(&*self.obj()).build());
    }

    fn build_inner(&self) -> Result<(), String> {
        let settings = self.settings.lock().unwrap().clone();
        let inner = gst::ElementFactory::make("whepserversink")
            .name("whepserversink")
            .build()
            .map_err(|e| format!("i2iwhepsink: no whepserversink element ({e}); build gst-plugin-webrtc-i2i and set GST_PLUGIN_PATH"))?;
        settings.endpoint.apply(&inner, *CAT)?;
        let signaller = inner.property::<glib::Object>("signaller");
        // Per-viewer congestion control without gst-plugins-rs's rtpgccbwe (the default `gcc`
        // needs it and would fall back to none). It acts on per-viewer encoders only.
        inner.set_property_from_str("congestion-control", "homegrown");
        // webrtcsink starts its signaller once the first frames have been probed for every
        // codec. A viewer taken in before that gets a session that webrtcsink renegotiates
        // when the probe ends, which WHEP cannot carry (the viewer's ICE fails), so this is
        // when the endpoint starts answering. The first handler's value ends the emission:
        // the signaller's own start (its HTTP server) is skipped, and it is off here anyway.
        let weak = self.obj().downgrade();
        signaller.connect("start", false, move |_| {
            if let Some(obj) = weak.upgrade() {
                gst::debug!(CAT, obj = obj, "first frames probed: taking viewers");
                obj.imp().ready.send_replace(true);
            }
            Some(false.to_value())
        });

        let weak = self.obj().downgrade();
        inner.connect("consumer-added", false, move |args| {
            let id = args
                .get(1)
                .and_then(|v| v.get::<String>().ok())
                .unwrap_or_default();
            if let Some(obj) = weak.upgrade() {
                obj.imp().post("viewer-added", &id, 1);
            }
            None
        });
        let weak = self.obj().downgrade();
        inner.connect("consumer-removed", false, move |args| {
            let id = args
                .get(1)
                .and_then(|v| v.get::<String>().ok())
                .unwrap_or_default();
            if let Some(obj) = weak.upgrade() {
                let imp = obj.imp();
                if let Some(endpoint) = imp.endpoint() {
                    endpoint.forget(&id);
                }
                imp.post("viewer-removed", &id, -1);
            }
            None
        });
        // Per-viewer encoders (none when encoding once: webrtcsink then only payloads).
        let weak = self.obj().downgrade();
        inner.connect("encoder-setup", false, move |args| {
            let consumer = args
                .get(1)
                .and_then(|v| v.get::<String>().ok())
                .unwrap_or_default();
            if consumer != "discovery"
                && let Some(obj) = weak.upgrade()
            {
                obj.imp().encoder_started(&consumer);
            }
            // Not configured here: webrtcsink's own handler sets the encoder up.
            Some(false.to_value())
        });

        let hold = make("queue", "hold")?;
        let clocksync = make("clocksync", "offset")?;
        apply_offset(&hold, &clocksync, settings.ts_offset);
        let (encoding, encoder) = match settings.codec {
            Codec::PerViewer => {
                // One raw format whatever the publisher's decoder gives (webrtcsink takes no
                // format change once viewers are served).
                let convert = make("videoconvert", "convert")?;
                let filter = make("capsfilter", "raw")?;
                filter.set_property(
                    "caps",
                    gst::Caps::builder("video/x-raw")
                        .field("format", "I420")
                        .build(),
                );
                (vec![convert, filter], None)
            }
            codec => {
                let (encoder, caps) = make_encoder(codec, settings.bitrate)?;
                let convert = make("videoconvert", "convert")?;
                let filter = make("capsfilter", "encoded")?;
                filter.set_property("caps", caps);
                keep_caps_changes_payloadable(&filter);
                (vec![convert, encoder.clone(), filter], Some(encoder))
            }
        };
        let mut elements = vec![hold.clone(), clocksync.clone()];
        elements.extend(encoding.iter().cloned());
        elements.push(inner.clone());
        self.obj()
            .add_many(&elements)
            .map_err(|e| format!("i2iwhepsink: {e}"))?;
        let inner_pad = inner
            .request_pad_simple("video_%u")
            .ok_or_else(|| "i2iwhepsink: whepserversink gave no video pad".to_string())?;
        gst::Element::link_many(&elements[..elements.len() - 1])
            .map_err(|e| format!("i2iwhepsink: the encoding chain does not link: {e}"))?;
        elements[elements.len() - 2]
            .static_pad("src")
            .expect("src pad")
            .link(&inner_pad)
            .map_err(|e| format!("i2iwhepsink: encoder to whepserversink: {e}"))?;
        if let Some(ghost) = self.ghost.lock().unwrap().as_ref() {
            ghost
                .set_target(Some(&hold.static_pad("sink").expect("queue sink")))
                .map_err(|e| format!("i2iwhepsink: {e}"))?;
        }
        gst::info!(
            CAT,
            imp = self,
            "WHEP endpoint {}/whep/endpoint, {:?}",
            settings.endpoint.host_addr,
            settings.codec
        );
        *self.chain.lock().unwrap() = Some(Chain {
            inner,
            hold,
            clocksync,
            encoding,
            encoder,
        });
        Ok(())
    }

    /// Takes the chain out again at READY -> NULL, so that the next start follows the
    /// settings (`codec` may have changed).
    fn remove_inner(&self) {
        let Some(chain) = self.chain.lock().unwrap().take() else {
            return;
        };
        if let Some(ghost) = self.ghost.lock().unwrap().as_ref() {
            let _ = ghost.set_target(None::<&gst::Pad>);
        }
        let mut elements = vec![chain.hold, chain.clocksync];
        elements.extend(chain.encoding);
        elements.push(chain.inner);
        for e in &elements {
            let _ = e.set_state(gst::State::Null);
        }
        let _ = self.obj().remove_many(&elements);
        *self.viewers.lock().unwrap() = Viewers::default();
    }
}

fn make(factory: &str, name: &str) -> Result<gst::Element, String> {
    gst::ElementFactory::make(factory)
        .name(name)
        .build()
        .map_err(|e| format!("i2iwhepsink: no {factory} element ({e}); run scripts/setup.sh (GStreamer base, good and ugly plugins)"))
}

/// The one encoder for all viewers, tuned for latency, and the caps it must give: constrained
/// baseline H264 is what every browser decodes.
fn make_encoder(codec: Codec, kbps: u32) -> Result<(gst::Element, gst::Caps), String> {
    match codec {
        Codec::H264 => {
            let enc = make("x264enc", "encoder")?;
            enc.set_property_from_str("tune", "zerolatency");
            enc.set_property_from_str("speed-preset", "ultrafast");
            enc.set_property("key-int-max", KEYFRAME_INTERVAL);
            set_bitrate(&enc, kbps);
            let caps = gst::Caps::builder("video/x-h264")
                .field("profile", "constrained-baseline")
                .build();
            Ok((enc, caps))
        }
        Codec::Vp8 => {
            let enc = make("vp8enc", "encoder")?;
            enc.set_property("deadline", 1i64);
            enc.set_property("cpu-used", 8i32);
            enc.set_property("lag-in-frames", 0i32);
            enc.set_property_from_str("end-usage", "cbr");
            enc.set_property("keyframe-max-dist", KEYFRAME_INTERVAL as i32);
            set_bitrate(&enc, kbps);
            Ok((enc, gst::Caps::new_empty_simple("video/x-vp8")))
        }
        Codec::PerViewer => Err("i2iwhepsink: per-viewer has no shared encoder".into()),
    }
}

/// Takes `streamheader` out of the encoded caps going to webrtcsink. vp8enc puts the size
/// and frame rate in it, and webrtcsink refuses any caps change it does not know to be
/// harmless (it cannot renegotiate with its viewers): a new publisher whose decoder gives a
/// frame rate (avdec_h264 reads 15/1 where vp8dec gave 0/1) or another size would stop the
/// pipeline not-negotiated. RTP payloaders do not use the stream header.
fn keep_caps_changes_payloadable(filter: &gst::Element) {
    let Some(pad) = filter.static_pad("src") else {
        return;
    };
    pad.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, |_, info| {
        let Some(gst::PadProbeData::Event(event)) = &info.data else {
            return gst::PadProbeReturn::Ok;
        };
        let gst::EventView::Caps(caps) = event.view() else {
            return gst::PadProbeReturn::Ok;
        };
        if !caps
            .caps()
            .structure(0)
            .is_some_and(|s| s.has_field("streamheader"))
        {
            return gst::PadProbeReturn::Ok;
        }
        let mut caps = caps.caps_owned();
        if let Some(s) = caps.make_mut().structure_mut(0) {
            s.remove_field("streamheader");
        }
        info.data = Some(gst::PadProbeData::Event(gst::event::Caps::new(&caps)));
        gst::PadProbeReturn::Ok
    });
}

/// `bitrate` in kbit/s on the shared encoder, live.
fn set_bitrate(encoder: &gst::Element, kbps: u32) {
    if encoder.find_property("target-bitrate").is_some() {
        encoder.set_property(
            "target-bitrate",
            i32::try_from(kbps * 1000).unwrap_or(i32::MAX),
        );
    } else {
        encoder.set_property("bitrate", kbps);
    }
}

impl WhepSink {
    fn start_server(&self) -> Result<(), String> {
        let settings = self.settings.lock().unwrap().clone();
        let inner = self
            .chain
            .lock()
            .unwrap()
            .as_ref()
            .map(|c| c.inner.clone())
            .ok_or("i2iwhepsink: no whepserversink")?;
        inner
            .property::<glib::Object>("signaller")
            .set_property("timeout", ANSWER_TIMEOUT.as_secs() as u32 + 2);
        let endpoint = Endpoint::new(
            Kind::Whep,
            inner,
            Arc::new(Events(self.obj().downgrade())),
            settings.codec.accepts(),
            settings.endpoint.access(),
            Limits {
                one_at_a_time: false,
                max_sessions: settings.max_viewers as usize,
                max_pending: settings.max_pending as usize,
                connect_timeout: Some(Duration::from_millis(u64::from(settings.connect_timeout))),
                answer_timeout: ANSWER_TIMEOUT,
            },
            Some(self.ready.subscribe()),
        );
        let host_addr = &settings.endpoint.host_addr;
        let server = Server::start(host_addr, endpoint)
            .map_err(|e| format!("i2iwhepsink: WHEP endpoint {host_addr}: {e}"))?;
        gst::info!(
            CAT,
            imp = self,
            "WHEP endpoint http://{}/whep/endpoint",
            server.addr
        );
        self.server.set(server);
        Ok(())
    }

    fn endpoint(&self) -> Option<Arc<Endpoint>> {
        self.server.endpoint()
    }
}

#[glib::object_subclass]
impl ObjectSubclass for WhepSink {
    const NAME: &'static str = "GstI2iWhepSink";
    type Type = super::WhepSink;
    type ParentType = gst::Bin;
}

impl ObjectImpl for WhepSink {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            let mut specs = endpoint::EndpointSettings::param_specs(Kind::Whep);
            specs.extend([
                glib::ParamSpecUInt::builder("playout-delay")
                    .nick("Playout delay")
                    .blurb("Milliseconds added to every frame's timestamp (river's offset): the video keeps its timing with this fixed delay, and frames may take this long before they are late")
                    .maximum(MAX_PLAYOUT_DELAY_MS)
                    .default_value((DEFAULT_TS_OFFSET / 1_000_000) as u32)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt64::builder("ts-offset")
                    .nick("Timestamp offset")
                    .blurb("Deprecated: use playout-delay (in ms; this one is in ns)")
                    .maximum(MAX_TS_OFFSET)
                    .default_value(DEFAULT_TS_OFFSET)
                    .mutable_playing()
                    .deprecated()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("codec", Codec::default())
                    .nick("Codec")
                    .blurb("h264 or vp8: encoded once here and the same frames sent to every viewer (viewers must offer that codec); per-viewer: one encoder per viewer in the codec its offer prefers, with its own congestion control. Takes effect from NULL to READY")
                    .build(),
                glib::ParamSpecUInt::builder("bitrate")
                    .nick("Bitrate")
                    .blurb("Bit rate of the shared encoder in kbit/s (codec h264 or vp8; per-viewer encoders follow each viewer's congestion control)")
                    .minimum(MIN_BITRATE)
                    .maximum(MAX_BITRATE)
                    .default_value(DEFAULT_BITRATE)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("max-viewers")
                    .nick("Maximum viewers")
                    .blurb("Viewers served at once, connected or connecting; past it an offer gets 503 with Retry-After")
                    .minimum(1)
                    .maximum(1000)
                    .default_value(DEFAULT_MAX_VIEWERS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("max-pending")
                    .nick("Maximum pending viewers")
                    .blurb("Viewers answered but not connected yet; past it an offer gets 503 with Retry-After")
                    .minimum(1)
                    .maximum(1000)
                    .default_value(DEFAULT_MAX_PENDING)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("connect-timeout")
                    .nick("Connect timeout")
                    .blurb("Milliseconds a viewer may take to connect after its answer; then its session ends")
                    .minimum(500)
                    .maximum(600_000)
                    .default_value(DEFAULT_CONNECT_TIMEOUT)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("encoders")
                    .nick("Encoders")
                    .blurb("Video encoders running for the viewers now: 1 when encoding once, one per viewer with codec=per-viewer")
                    .read_only()
                    .build(),
            ]);
            specs
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        self.warn_renamed(pspec.name());
        let mut settings = self.settings.lock().unwrap();
        if settings.endpoint.set(pspec.name(), value) {
            return;
        }
        match pspec.name() {
            name @ ("playout-delay" | "ts-offset") => {
                settings.ts_offset = if name == "ts-offset" {
                    value.get().unwrap_or(DEFAULT_TS_OFFSET)
                } else {
                    u64::from(value.get::<u32>().unwrap_or(0)) * 1_000_000
                };
                if let Some(chain) = self.chain.lock().unwrap().as_ref() {
                    apply_offset(&chain.hold, &chain.clocksync, settings.ts_offset);
                }
            }
            "codec" => settings.codec = value.get().unwrap_or_default(),
            "max-viewers" => settings.max_viewers = value.get().unwrap_or(DEFAULT_MAX_VIEWERS),
            "max-pending" => settings.max_pending = value.get().unwrap_or(DEFAULT_MAX_PENDING),
            "connect-timeout" => {
                settings.connect_timeout = value.get().unwrap_or(DEFAULT_CONNECT_TIMEOUT)
            }
            "bitrate" => {
                settings.bitrate = value.get().unwrap_or(DEFAULT_BITRATE);
                if let Some(encoder) = self
                    .chain
                    .lock()
                    .unwrap()
                    .as_ref()
                    .and_then(|c| c.encoder.as_ref())
                {
                    set_bitrate(encoder, settings.bitrate);
                }
            }
            other => unreachable!("no property {other}: GObject only passes registered names"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        self.warn_renamed(pspec.name());
        let settings = self.settings.lock().unwrap();
        if let Some(value) = settings.endpoint.get(pspec.name()) {
            return value;
        }
        match pspec.name() {
            "playout-delay" => ((settings.ts_offset / 1_000_000) as u32).to_value(),
            "ts-offset" => settings.ts_offset.to_value(),
            "codec" => settings.codec.to_value(),
            "bitrate" => settings.bitrate.to_value(),
            "max-viewers" => settings.max_viewers.to_value(),
            "max-pending" => settings.max_pending.to_value(),
            "connect-timeout" => settings.connect_timeout.to_value(),
            "encoders" => {
                drop(settings);
                self.encoders().to_value()
            }
            other => unreachable!("no property {other}: GObject only passes registered names"),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        let templ = obj.pad_template("sink").expect("sink template");
        let ghost = gst::GhostPad::builder_from_template(&templ)
            .name("sink")
            .build();
        obj.add_pad(&ghost).expect("adding the sink ghost pad");
        *self.ghost.lock().unwrap() = Some(ghost);
        // A sink for the pipeline's EOS collection (see the header).
        obj.set_element_flags(gst::ElementFlags::SINK);
    }
}

impl GstObjectImpl for WhepSink {}

impl ElementImpl for WhepSink {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static ELEMENT_METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "i2i WHEP sink",
                "Sink/Network/WebRTC",
                "WHEP endpoint serving the incoming video to any number of browser viewers, with a fixed timestamp offset",
                "i2i developers",
            )
        });
        Some(&*ELEMENT_METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static PAD_TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            vec![
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &gst::Caps::new_empty_simple("video/x-raw"),
                )
                .expect("sink template"),
            ]
        });
        PAD_TEMPLATES.as_ref()
    }

    /// The pipeline's latency is not waited for here: the viewers have jitter buffers of
    /// their own, so each frame goes out as soon as it arrives (or at capture time plus
    /// `playout-delay`). Left to webrtcsink, its inner sinks would hold every frame for the whole
    /// upstream latency (the publisher's 200 ms jitter buffer with `i2iwhipsrc`).
    fn query(&self, query: &mut gst::QueryRef) -> bool {
        if let gst::QueryViewMut::Latency(q) = query.view_mut() {
            q.set(true, gst::ClockTime::ZERO, gst::ClockTime::NONE);
            return true;
        }
        self.parent_query(query)
    }

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        self.deprecations.post_pending(&*self.obj());
        if transition == gst::StateChange::NullToReady && self.chain.lock().unwrap().is_none() {
            self.build_inner().map_err(|msg| {
                gst::element_imp_error!(self, gst::CoreError::MissingPlugin, ("{msg}"));
                gst::StateChangeError
            })?;
        }
        if transition == gst::StateChange::NullToReady
            && !self.server.is_running()
            && let Err(msg) = self.start_server()
        {
            gst::element_imp_error!(self, gst::ResourceError::OpenWrite, ("{msg}"));
            return Err(gst::StateChangeError);
        }
        let ret = self.parent_change_state(transition);
        if transition == gst::StateChange::PausedToReady {
            self.ready.send_replace(false);
        }
        if transition == gst::StateChange::ReadyToNull {
            self.server.stop();
            self.remove_inner();
        }
        ret
    }
}

impl BinImpl for WhepSink {}

/// The offset as clocksync wants it: synchronised only when there is an offset to keep, so that
/// `playout-delay=0` adds no waiting at all. The queue in front holds the frames in flight during
/// the offset (and 200 ms more), or one frame without an offset.
fn apply_offset(hold: &gst::Element, clocksync: &gst::Element, offset: u64) {
    hold.set_property("max-size-bytes", 0u32);
    if offset > 0 {
        hold.set_property("max-size-buffers", 0u32);
        hold.set_property("max-size-time", offset.saturating_add(200_000_000));
    } else {
        hold.set_property("max-size-buffers", 1u32);
        hold.set_property("max-size-time", 0u64);
    }
    clocksync.set_property("sync", offset > 0);
    clocksync.set_property("ts-offset", i64::try_from(offset).unwrap_or(i64::MAX));
}
