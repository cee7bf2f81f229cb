// SPDX-License-Identifier: MPL-2.0
//! `i2iwhepsink`: a bin around gst-plugins-rs's `whepserversink` with one always `sink` pad, so
//! `... ! i2itransform ! i2iwhepsink` serves the transformed video to browsers over WHEP.
//!
//! What it adds to `whepserversink`:
//! - `ts-offset`: river's fixed timestamp offset on the output side. A `clocksync` in front of
//!   the WHEP sink releases each frame at its capture running time plus the offset, so the
//!   viewers get the frames with their original spacing and one fixed, known delay; a frame
//!   whose transform took longer than the offset goes out at once (late, counted by clocksync's
//!   QoS messages);
//! - 127.0.0.1 (or the `local-addresses` list) as an ICE host candidate, which libnice never
//!   offers by itself, so viewers on the same machine connect;
//! - no STUN server by default (a rig with no internet answers at once);
//! - its own HTTP front (`endpoint.rs`), listening from READY (not only once frames flow):
//!   clear refusals (malformed SDP, no video, unsupported codec, unknown resource) in the
//!   response and as bus warnings, CORS for browser pages;
//! - element messages `i2iwhepsink` with `event=viewer-added` / `viewer-removed` and the number
//!   of `viewers`.
//!
//! Each viewer is a webrtcsink consumer with its own encoder and congestion control
//! (webrtcsink's `homegrown` sender-side heuristic): a viewer that falls behind lowers only its
//! own bitrate.

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use std::collections::BTreeSet;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use crate::endpoint::{self, Endpoint, Kind, Server};
use crate::loopback;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "i2iwhepsink",
        gst::DebugColorFlags::empty(),
        Some("WHEP endpoint for browser viewers"),
    )
});

const DEFAULT_HOST_ADDR: &str = "http://127.0.0.1:8191";
const DEFAULT_LOCAL_ADDRESSES: &str = "127.0.0.1";
const DEFAULT_TS_OFFSET: u64 = 0;
const MAX_TS_OFFSET: u64 = 10 * gst::ClockTime::SECOND.nseconds();

#[derive(Debug, Clone)]
struct Settings {
    host_addr: String,
    local_addresses: String,
    stun_server: Option<String>,
    ts_offset: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            host_addr: DEFAULT_HOST_ADDR.into(),
            local_addresses: DEFAULT_LOCAL_ADDRESSES.into(),
            stun_server: None,
            ts_offset: DEFAULT_TS_OFFSET,
        }
    }
}

#[derive(Default)]
pub struct WhepSink {
    settings: Mutex<Settings>,
    inner: Mutex<Option<gst::Element>>,
    clocksync: Mutex<Option<gst::Element>>,
    ghost: Mutex<Option<gst::GhostPad>>,
    viewers: Mutex<i64>,
    server: Mutex<Option<Server>>,
    refusals: Mutex<endpoint::RateLimit>,
    /// True once webrtcsink has probed its codecs on the first frames (it then starts its
    /// signaller): the endpoint holds offers until then.
    ready: tokio::sync::watch::Sender<bool>,
}

/// What the HTTP front tells the element.
struct Events(glib::WeakRef<super::WhepSink>);

impl endpoint::Events for Events {
    fn refused(&self, what: &str) {
        if let Some(obj) = self.0.upgrade() {
            let imp = obj.imp();
            let Some(more) = imp.refusals.lock().unwrap().allow() else {
                return;
            };
            gst::element_imp_warning!(imp, gst::ResourceError::Read, ("i2iwhepsink: {what}{more}"));
        }
    }

    fn admit(&self, _live: &BTreeSet<String>) -> Result<Vec<String>, String> {
        Ok(Vec::new())
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
    fn post(&self, event: &str, viewer: &str, delta: i64) {
        let viewers = {
            let mut v = self.viewers.lock().unwrap();
            *v = (*v + delta).max(0);
            *v
        };
        let s = gst::Structure::builder("i2iwhepsink")
            .field("event", event)
            .field("viewer", viewer)
            .field("viewers", viewers)
            .build();
        let _ = self
            .obj()
            .post_message(gst::message::Element::builder(s).src(&*self.obj()).build());
    }

    fn build_inner(&self) -> Result<(), String> {
        let settings = self.settings.lock().unwrap().clone();
        if endpoint::url_is_bad(&settings.host_addr) {
            return Err(format!(
                "i2iwhepsink: host-addr {:?} is not an http://host:port address",
                settings.host_addr
            ));
        }
        let inner = gst::ElementFactory::make("whepserversink")
            .name("whepserversink")
            .build()
            .map_err(|e| format!("i2iwhepsink: no whepserversink element ({e}); build gst-plugin-webrtc-i2i and set GST_PLUGIN_PATH"))?;
        let signaller = inner.property::<glib::Object>("signaller");
        // Our HTTP front serves the endpoint (see endpoint.rs): the signaller's own server is off.
        signaller.set_property("host-addr", "");
        signaller.set_property("stun-server", settings.stun_server.as_deref());
        inner.set_property("stun-server", settings.stun_server.as_deref());
        // Per-viewer congestion control without gst-plugins-rs's rtpgccbwe (the default `gcc`
        // needs it and would fall back to none).
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
        loopback::hook(
            &inner,
            loopback::parse_list(&settings.local_addresses),
            *CAT,
        );

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
                obj.imp().post("viewer-removed", &id, -1);
            }
            None
        });

        let clocksync = gst::ElementFactory::make("clocksync")
            .name("offset")
            .build()
            .map_err(|e| {
                format!("i2iwhepsink: no clocksync element ({e}); install GStreamer >= 1.18")
            })?;
        apply_offset(&clocksync, settings.ts_offset);
        self.obj()
            .add_many([&clocksync, &inner])
            .map_err(|e| format!("i2iwhepsink: {e}"))?;
        let inner_pad = inner
            .request_pad_simple("video_%u")
            .ok_or_else(|| "i2iwhepsink: whepserversink gave no video pad".to_string())?;
        clocksync
            .static_pad("src")
            .expect("clocksync src")
            .link(&inner_pad)
            .map_err(|e| format!("i2iwhepsink: clocksync to whepserversink: {e}"))?;
        if let Some(ghost) = self.ghost.lock().unwrap().as_ref() {
            ghost
                .set_target(Some(&clocksync.static_pad("sink").expect("clocksync sink")))
                .map_err(|e| format!("i2iwhepsink: {e}"))?;
        }
        *self.clocksync.lock().unwrap() = Some(clocksync);
        gst::info!(
            CAT,
            imp = self,
            "WHEP endpoint {}/whep/endpoint",
            settings.host_addr
        );
        *self.inner.lock().unwrap() = Some(inner);
        Ok(())
    }
}

impl WhepSink {
    fn start_server(&self) -> Result<(), String> {
        let host_addr = self.settings.lock().unwrap().host_addr.clone();
        let inner = self
            .inner
            .lock()
            .unwrap()
            .clone()
            .ok_or("i2iwhepsink: no whepserversink")?;
        let endpoint = Endpoint::new(
            Kind::Whep,
            inner,
            Arc::new(Events(self.obj().downgrade())),
            Duration::from_secs(30),
            Some(self.ready.subscribe()),
        );
        let server = Server::start(&host_addr, endpoint)
            .map_err(|e| format!("i2iwhepsink: WHEP endpoint {host_addr}: {e}"))?;
        gst::info!(
            CAT,
            imp = self,
            "WHEP endpoint http://{}/whep/endpoint",
            server.addr
        );
        *self.server.lock().unwrap() = Some(server);
        Ok(())
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
            vec![
                glib::ParamSpecString::builder("host-addr")
                    .nick("Host address")
                    .blurb("HTTP address the WHEP endpoint listens on; viewers POST to <host-addr>/whep/endpoint (listening from READY; offers are answered once frames flow)")
                    .default_value(Some(DEFAULT_HOST_ADDR))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("local-addresses")
                    .nick("Extra ICE addresses")
                    .blurb("Comma-separated local IP addresses offered as ICE host candidates besides those libnice finds (it never offers 127.0.0.1 itself); empty for none")
                    .default_value(Some(DEFAULT_LOCAL_ADDRESSES))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("stun-server")
                    .nick("STUN server")
                    .blurb("stun://host:port for viewers behind NAT; unset (default) for none")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("ts-offset")
                    .nick("Timestamp offset")
                    .blurb("Nanoseconds added to every frame's timestamp (river's offset): the video keeps its timing with this fixed delay, and frames may take this long before they are late")
                    .maximum(MAX_TS_OFFSET)
                    .default_value(DEFAULT_TS_OFFSET)
                    .mutable_playing()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut settings = self.settings.lock().unwrap();
        match pspec.name() {
            "host-addr" => {
                settings.host_addr = value
                    .get::<Option<String>>()
                    .unwrap_or_default()
                    .unwrap_or_else(|| DEFAULT_HOST_ADDR.into())
            }
            "local-addresses" => {
                settings.local_addresses = value
                    .get::<Option<String>>()
                    .unwrap_or_default()
                    .unwrap_or_default()
            }
            "stun-server" => {
                settings.stun_server = value
                    .get::<Option<String>>()
                    .unwrap_or_default()
                    .filter(|s| !s.is_empty())
            }
            "ts-offset" => {
                settings.ts_offset = value.get().unwrap_or(DEFAULT_TS_OFFSET);
                if let Some(clocksync) = self.clocksync.lock().unwrap().as_ref() {
                    apply_offset(clocksync, settings.ts_offset);
                }
            }
            other => unreachable!("no property {other}: GObject only passes registered names"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let settings = self.settings.lock().unwrap();
        match pspec.name() {
            "host-addr" => settings.host_addr.to_value(),
            "local-addresses" => settings.local_addresses.to_value(),
            "stun-server" => settings.stun_server.to_value(),
            "ts-offset" => settings.ts_offset.to_value(),
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

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        if transition == gst::StateChange::NullToReady && self.inner.lock().unwrap().is_none() {
            self.build_inner().map_err(|msg| {
                gst::element_imp_error!(self, gst::CoreError::MissingPlugin, ("{msg}"));
                gst::StateChangeError
            })?;
        }
        if transition == gst::StateChange::NullToReady
            && self.server.lock().unwrap().is_none()
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
            self.server.lock().unwrap().take();
        }
        ret
    }
}

impl BinImpl for WhepSink {}

/// The offset as clocksync wants it: synchronised only when there is an offset to keep, so that
/// `ts-offset=0` adds no waiting at all.
fn apply_offset(clocksync: &gst::Element, offset: u64) {
    clocksync.set_property("sync", offset > 0);
    clocksync.set_property("ts-offset", i64::try_from(offset).unwrap_or(i64::MAX));
}
