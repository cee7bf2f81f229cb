// SPDX-License-Identifier: MPL-2.0
//! `i2iwhipsrc`: a bin around gst-plugins-rs's `whipserversrc` with one always `src` pad of raw
//! video, so `i2iwhipsrc ! videoconvert ! i2itransform ...` links in gst-launch before anyone
//! publishes.
//!
//! What it adds to `whipserversrc`:
//! - the publisher's video pad becomes the target of the `src` ghost pad; a new publisher's pad
//!   replaces it (the last publisher wins), audio pads go to a fakesink;
//! - the publisher leaving does not end the pipeline: its EOS is dropped and an element message
//!   `i2iwhipsrc` with `event=publisher-gone` is posted instead (`publisher-connected` when one
//!   arrives), so the next publisher can take over;
//! - 127.0.0.1 (or the `local-addresses` list) as an ICE host candidate, which libnice never
//!   offers by itself, so publishers on the same machine connect;
//! - no STUN server by default (a rig with no internet answers at once);
//! - its own HTTP front (`endpoint.rs`): clear refusals (malformed SDP, no video, unsupported
//!   codec, unknown resource) in the response and as bus warnings, CORS for browser pages;
//! - an EOS sent to the element (gst-launch-1.0 -e on Ctrl-C) goes downstream at once, with
//!   or without a publisher, so the pipeline drains and stops cleanly;
//! - `busy-policy`: a new publisher `replace`s the live one (default) or is `refuse`d (409);
//! - a publisher that vanishes without DELETE (no video for `publisher-timeout` seconds) is
//!   ended, `publisher-gone` is posted with `reason=timeout`, and the next one is accepted.

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use std::collections::BTreeSet;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use crate::endpoint::{self, Endpoint, Kind, Server};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "i2iwhipsrc",
        gst::DebugColorFlags::empty(),
        Some("WHIP endpoint to raw video"),
    )
});

const DEFAULT_TIMEOUT: u32 = 15;
const DEFAULT_PUBLISHER_TIMEOUT: u32 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, glib::Enum, Default)]
#[repr(u32)]
#[enum_type(name = "GstI2iWhipBusyPolicy")]
pub enum BusyPolicy {
    #[default]
    #[enum_value(name = "Replace: a new publisher ends the live one", nick = "replace")]
    Replace = 0,
    #[enum_value(
        name = "Refuse: a new publisher gets 409 while one is live",
        nick = "refuse"
    )]
    Refuse = 1,
}

#[derive(Debug, Clone)]
struct Settings {
    endpoint: endpoint::EndpointSettings,
    timeout: u32,
    busy_policy: BusyPolicy,
    publisher_timeout: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            endpoint: endpoint::EndpointSettings::new(Kind::Whip),
            timeout: DEFAULT_TIMEOUT,
            busy_policy: BusyPolicy::default(),
            publisher_timeout: DEFAULT_PUBLISHER_TIMEOUT,
        }
    }
}

#[derive(Default)]
pub struct WhipSrc {
    settings: Mutex<Settings>,
    inner: Mutex<Option<gst::Element>>,
    ghost: Mutex<Option<gst::GhostPad>>,
    publishers: Mutex<u64>,
    server: Mutex<Option<(Server, Arc<Endpoint>)>>,
    /// When the publisher's last frame (or its session start) was seen.
    last_seen: Arc<Mutex<Option<Instant>>>,
    refusals: Mutex<endpoint::RateLimit>,
}

/// What the HTTP front tells the element.
struct Events(glib::WeakRef<super::WhipSrc>);

impl endpoint::Events for Events {
    fn refused(&self, what: &str) {
        if let Some(obj) = self.0.upgrade() {
            obj.imp().refused(what);
        }
    }

    fn admit(&self, live: &BTreeSet<String>) -> Result<Vec<String>, String> {
        let Some(obj) = self.0.upgrade() else {
            return Err("the element is gone".into());
        };
        let policy = obj.imp().settings.lock().unwrap().busy_policy;
        match policy {
            BusyPolicy::Replace => Ok(live.iter().cloned().collect()),
            BusyPolicy::Refuse if live.is_empty() => Ok(Vec::new()),
            BusyPolicy::Refuse => Err(format!(
                "a publisher is live (resource {}); it must DELETE first (busy-policy=refuse)",
                live.iter().next().map(String::as_str).unwrap_or("?")
            )),
        }
    }

    fn session(&self, id: &str, started: bool) {
        if let Some(obj) = self.0.upgrade() {
            let imp = obj.imp();
            if started {
                *imp.last_seen.lock().unwrap() = Some(Instant::now());
            }
            imp.post(
                if started {
                    "session-started"
                } else {
                    "session-ended"
                },
                id,
            );
        }
    }
}

impl WhipSrc {
    fn refused(&self, what: &str) {
        let Some(more) = self.refusals.lock().unwrap().allow() else {
            return;
        };
        gst::element_imp_warning!(self, gst::ResourceError::Read, ("i2iwhipsrc: {what}{more}"));
    }

    fn post(&self, event: &str, pad: &str) {
        let s = gst::Structure::builder("i2iwhipsrc")
            .field("event", event)
            .field("pad", pad)
            .field("publishers", *self.publishers.lock().unwrap())
            .build();
        let _ = self
            .obj()
            .post_message(gst::message::Element::builder(s).src(&*self.obj()).build());
    }

    fn pad_added(&self, pad: &gst::Pad) {
        let name = pad.name();
        if name.starts_with("video") {
            // The publisher's EOS must not end the pipeline: the next one takes over.
            let last_seen = self.last_seen.clone();
            pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                *last_seen.lock().unwrap() = Some(Instant::now());
                gst::PadProbeReturn::Ok
            });
            let weak = self.obj().downgrade();
            let pad_name = name.to_string();
            pad.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
                if let Some(gst::PadProbeData::Event(ev)) = &info.data
                    && ev.type_() == gst::EventType::Eos
                {
                    if let Some(obj) = weak.upgrade() {
                        gst::info!(CAT, obj = obj, "publisher on {pad_name} ended");
                    }
                    return gst::PadProbeReturn::Drop;
                }
                gst::PadProbeReturn::Ok
            });
            let ghost = self.ghost.lock().unwrap().clone();
            if let Some(ghost) = ghost {
                if ghost.target().is_some() {
                    gst::info!(
                        CAT,
                        imp = self,
                        "new publisher on {name} replaces the last one"
                    );
                }
                if let Err(err) = ghost.set_target(Some(pad)) {
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::Failed,
                        ("i2iwhipsrc: cannot output the publisher's video pad {name}: {err}")
                    );
                    return;
                }
            }
            *self.publishers.lock().unwrap() += 1;
            self.post("publisher-connected", &name);
        } else {
            // Audio (OBS sends it): consumed here, the transform is video only.
            let sink = match gst::ElementFactory::make("fakesink")
                .property("async", false)
                .property("sync", false)
                .build()
            {
                Ok(s) => s,
                Err(err) => {
                    gst::warning!(CAT, imp = self, "no fakesink for {name}: {err}");
                    return;
                }
            };
            let obj = self.obj();
            if obj.add(&sink).is_ok() {
                let _ = sink.sync_state_with_parent();
                if let Some(sinkpad) = sink.static_pad("sink") {
                    let _ = pad.link(&sinkpad);
                }
            }
        }
    }

    fn pad_removed(&self, pad: &gst::Pad) {
        let name = pad.name();
        if name.starts_with("video") {
            self.post("publisher-gone", &name);
        }
    }
}

#[glib::object_subclass]
impl ObjectSubclass for WhipSrc {
    const NAME: &'static str = "GstI2iWhipSrc";
    type Type = super::WhipSrc;
    type ParentType = gst::Bin;
}

impl ObjectImpl for WhipSrc {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            let mut specs = endpoint::EndpointSettings::param_specs(Kind::Whip);
            specs.extend([
                glib::ParamSpecUInt::builder("timeout")
                    .nick("Answer timeout")
                    .blurb("Seconds a POST waits for the SDP answer before failing with 500")
                    .minimum(1)
                    .maximum(3600)
                    .default_value(DEFAULT_TIMEOUT)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("busy-policy", BusyPolicy::default())
                    .nick("Busy policy")
                    .blurb("What a new publisher does while one is live: replace it, or be refused with 409")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("publisher-timeout")
                    .nick("Publisher timeout")
                    .blurb("Seconds without video after which a publisher that left without DELETE is ended")
                    .minimum(1)
                    .maximum(600)
                    .default_value(DEFAULT_PUBLISHER_TIMEOUT)
                    .mutable_playing()
                    .build(),
            ]);
            specs
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut settings = self.settings.lock().unwrap();
        if settings.endpoint.set(pspec.name(), value) {
            return;
        }
        match pspec.name() {
            "timeout" => settings.timeout = value.get().unwrap_or(DEFAULT_TIMEOUT),
            "busy-policy" => settings.busy_policy = value.get().unwrap_or_default(),
            "publisher-timeout" => {
                settings.publisher_timeout = value.get().unwrap_or(DEFAULT_PUBLISHER_TIMEOUT)
            }
            other => unreachable!("no property {other}: GObject only passes registered names"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let settings = self.settings.lock().unwrap();
        if let Some(value) = settings.endpoint.get(pspec.name()) {
            return value;
        }
        match pspec.name() {
            "timeout" => settings.timeout.to_value(),
            "busy-policy" => settings.busy_policy.to_value(),
            "publisher-timeout" => settings.publisher_timeout.to_value(),
            other => unreachable!("no property {other}: GObject only passes registered names"),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        let templ = obj.pad_template("src").expect("src template");
        let ghost = gst::GhostPad::builder_from_template(&templ)
            .name("src")
            .build();
        obj.add_pad(&ghost).expect("adding the src ghost pad");
        *self.ghost.lock().unwrap() = Some(ghost);
    }
}

impl GstObjectImpl for WhipSrc {}

impl ElementImpl for WhipSrc {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static ELEMENT_METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "i2i WHIP source",
                "Source/Network/WebRTC",
                "WHIP endpoint (HTTP POST of an SDP offer) whose publisher's video is output decoded, the last publisher winning",
                "i2i developers",
            )
        });
        Some(&*ELEMENT_METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static PAD_TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            vec![
                gst::PadTemplate::new(
                    "src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &gst::Caps::new_empty_simple("video/x-raw"),
                )
                .expect("src template"),
            ]
        });
        PAD_TEMPLATES.as_ref()
    }

    /// An EOS sent to the element (gst-launch-1.0 -e on Ctrl-C, an application ending the
    /// stream) goes out of the `src` pad at once: the publisher's own EOS is dropped inside
    /// (the next publisher continues), so without this the pipeline would never drain, and
    /// with no publisher there is nothing upstream to send it.
    fn send_event(&self, event: gst::Event) -> bool {
        if event.type_() == gst::EventType::Eos {
            let Some(ghost) = self.ghost.lock().unwrap().clone() else {
                return false;
            };
            gst::info!(
                CAT,
                imp = self,
                "end of stream requested: sending EOS downstream"
            );
            // Nothing of the publisher's may follow the EOS (events after EOS upset the pads
            // downstream): from here its data stops at its own pad.
            if let Some(target) = ghost.target() {
                target.add_probe(gst::PadProbeType::DATA_DOWNSTREAM, |_, _| {
                    gst::PadProbeReturn::Drop
                });
            }
            return ghost.push_event(event);
        }
        self.parent_send_event(event)
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
            gst::element_imp_error!(self, gst::ResourceError::OpenRead, ("{msg}"));
            return Err(gst::StateChangeError);
        }
        let ret = self.parent_change_state(transition);
        if transition == gst::StateChange::ReadyToNull {
            self.server.lock().unwrap().take();
        }
        ret
    }
}

impl BinImpl for WhipSrc {}

impl WhipSrc {
    fn build_inner(&self) -> Result<(), String> {
        let settings = self.settings.lock().unwrap().clone();
        let inner = gst::ElementFactory::make("whipserversrc")
            .name("whipserversrc")
            .build()
            .map_err(|e| format!("i2iwhipsrc: no whipserversrc element ({e}); build gst-plugin-webrtc-i2i and set GST_PLUGIN_PATH"))?;
        settings.endpoint.apply(&inner, *CAT)?;
        inner
            .property::<glib::Object>("signaller")
            .set_property("timeout", settings.timeout);

        let weak = self.obj().downgrade();
        inner.connect_pad_added(move |_, pad| {
            if let Some(obj) = weak.upgrade() {
                obj.imp().pad_added(pad);
            }
        });
        let weak = self.obj().downgrade();
        inner.connect_pad_removed(move |_, pad| {
            if let Some(obj) = weak.upgrade() {
                obj.imp().pad_removed(pad);
            }
        });
        self.obj()
            .add(&inner)
            .map_err(|e| format!("i2iwhipsrc: {e}"))?;
        gst::info!(
            CAT,
            imp = self,
            "WHIP endpoint {}/whip/endpoint",
            settings.endpoint.host_addr
        );
        *self.inner.lock().unwrap() = Some(inner);
        Ok(())
    }
}

impl WhipSrc {
    fn start_server(&self) -> Result<(), String> {
        let (host_addr, timeout) = {
            let s = self.settings.lock().unwrap();
            (s.endpoint.host_addr.clone(), s.timeout)
        };
        let inner = self
            .inner
            .lock()
            .unwrap()
            .clone()
            .ok_or("i2iwhipsrc: no whipserversrc")?;
        let endpoint = Endpoint::new(
            Kind::Whip,
            inner,
            Arc::new(Events(self.obj().downgrade())),
            Duration::from_secs(u64::from(timeout)),
            endpoint::Accepts::ALL,
            None,
        );
        let server = Server::start(&host_addr, endpoint.clone())
            .map_err(|e| format!("i2iwhipsrc: WHIP endpoint {host_addr}: {e}"))?;
        gst::info!(
            CAT,
            imp = self,
            "WHIP endpoint http://{}/whip/endpoint",
            server.addr
        );

        // The watchdog: a publisher gone without DELETE sends no more video.
        let weak = self.obj().downgrade();
        let watched = endpoint.clone();
        server.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                let Some(obj) = weak.upgrade() else { return };
                let imp = obj.imp();
                let limit = Duration::from_secs(u64::from(imp.settings.lock().unwrap().publisher_timeout));
                let stale = imp.last_seen.lock().unwrap().is_some_and(|t| t.elapsed() > limit);
                let live = watched.live();
                if !stale || live.is_empty() {
                    continue;
                }
                drop(obj);
                for id in live {
                    if watched.end(&id).await
                        && let Some(obj) = weak.upgrade()
                    {
                        let imp = obj.imp();
                        gst::element_imp_warning!(
                            imp,
                            gst::ResourceError::Read,
                            ("i2iwhipsrc: publisher {id} sent no video for {} s and did not DELETE: ended, the endpoint takes a new publisher", limit.as_secs())
                        );
                        imp.post("publisher-gone", &id);
                    }
                }
                if let Some(obj) = weak.upgrade() {
                    *obj.imp().last_seen.lock().unwrap() = None;
                }
            }
        });
        *self.server.lock().unwrap() = Some((server, endpoint));
        Ok(())
    }
}
