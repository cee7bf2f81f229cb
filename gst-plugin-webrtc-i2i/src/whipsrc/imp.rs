// SPDX-License-Identifier: MPL-2.0
//! `i2iwhipsrc`: a bin around gst-plugins-rs's `whipserversrc` with one always `src` pad of raw
//! video, so `i2iwhipsrc ! videoconvert ! i2itransform ...` links in gst-launch before anyone
//! publishes.
//!
//! What it adds to `whipserversrc`:
//! - the publisher's video pad becomes the target of the `src` ghost pad; a new publisher's pad
//!   replaces it (the last publisher wins). Publishers come and go without touching the
//!   pipeline: what webrtcsrc sends downstream when a session ends (a flush-start that is never
//!   stopped, before it removes the pad, and any EOS) stays at the publisher's pad, so the
//!   next publisher's frames flow through the same elements; an element message `i2iwhipsrc`
//!   with `event=publisher-gone` is posted instead (`publisher-connected` when one arrives);
//! - only the offer's first usable video m-line is taken: its other audio and video m-lines
//!   are answered `inactive` (`offer.rs`), so a publisher's audio (OBS sends Opus) is not sent
//!   at all, and each publisher has one pad;
//! - WebRTC failing on a publisher (an error from inside `whipserversrc`: webrtcbin refusing
//!   the offer, a decoder) ends that publisher's session with a warning instead of the
//!   pipeline, and its POST is answered 400 at once;
//! - 127.0.0.1 (or the `local-addresses` list) as an ICE host candidate, which libnice never
//!   offers by itself, so publishers on the same machine connect;
//! - no STUN server by default (a rig with no internet answers at once);
//! - its own HTTP front (`endpoint.rs`): offers checked in full (`offer.rs`), bearer-token
//!   authentication (`token`), CORS only for `allowed-origins`, clear refusals in the response
//!   and as bus warnings;
//! - an EOS sent to the element (gst-launch-1.0 -e on Ctrl-C) goes downstream at once, with
//!   or without a publisher, so the pipeline drains and stops cleanly;
//! - `busy-policy`: a new publisher `replace`s the live one (default) or is `refuse`d (409);
//!   offers go to webrtcsrc one at a time (it holds one session);
//! - a new publisher's first picture comes at once: its depayloader asks for a keyframe on
//!   packet loss and waits for one, and until its first frame is decoded a keyframe is asked
//!   for every second (a force-key-unit event upstream, sent to the publisher as RTCP PLI):
//!   an encoder's first keyframe goes out before the connection is up and is lost, and
//!   encoders like webrtcsink's x264enc send the next one seconds later;
//! - a publisher that vanishes without DELETE (no video for `publisher-timeout` ms) is
//!   ended, `publisher-gone` is posted with its resource id, and the next one is accepted.

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use crate::endpoint::{self, Busy, Endpoint, Kind, Limits, Server};
use crate::offer::Accepts;
use i2i_core::rate_limit::RateLimit;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "i2iwhipsrc",
        gst::DebugColorFlags::empty(),
        Some("WHIP endpoint to raw video"),
    )
});

const DEFAULT_ANSWER_TIMEOUT: u32 = 15_000;
const DEFAULT_PUBLISHER_TIMEOUT: u32 = 5_000;

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
    answer_timeout: u32,
    busy_policy: BusyPolicy,
    publisher_timeout: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            endpoint: endpoint::EndpointSettings::new(Kind::Whip),
            answer_timeout: DEFAULT_ANSWER_TIMEOUT,
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
    server: endpoint::Running,
    /// When the publisher's last frame (or its session start) was seen.
    last_seen: Arc<Mutex<Option<Instant>>>,
    warnings: Mutex<RateLimit>,
    /// An EOS went downstream: no publisher's data may follow it.
    ended: Arc<AtomicBool>,
    /// The publisher's pad is out, its first frame not yet: when a keyframe was last asked for.
    awaiting_picture: Arc<Mutex<Option<Instant>>>,
}

/// How often a publisher whose first frame has not come is asked for a keyframe.
const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_secs(1);

/// An upstream force-key-unit event (what gst_video_event_new_upstream_force_key_unit
/// makes): rtpsession turns it into RTCP PLI / FIR to the publisher.
fn keyframe_request() -> gst::Event {
    gst::event::CustomUpstream::new(
        gst::Structure::builder("GstForceKeyUnit")
            .field("running-time", u64::MAX)
            .field("all-headers", true)
            .field("count", 0u32)
            .build(),
    )
}

/// Depayloaders inside `whipserversrc` ask for a keyframe when packets are lost and drop
/// what cannot be decoded until it comes.
fn tune_depayloader(element: &gst::Element) {
    for property in ["request-keyframe", "wait-for-keyframe"] {
        if element
            .find_property(property)
            .is_some_and(|p| p.value_type() == bool::static_type())
        {
            element.set_property(property, true);
        }
    }
}

/// What the HTTP front tells the element.
struct Events(glib::WeakRef<super::WhipSrc>);

impl endpoint::Events for Events {
    fn warn(&self, what: &str) {
        if let Some(obj) = self.0.upgrade() {
            obj.imp().warn(what);
        }
    }

    fn busy(&self) -> Busy {
        let policy = self
            .0
            .upgrade()
            .map(|obj| obj.imp().settings.lock().unwrap().busy_policy);
        match policy {
            Some(BusyPolicy::Replace) => Busy::Replace,
            _ => Busy::Refuse,
        }
    }

    fn session(&self, id: &str, started: bool) {
        if let Some(obj) = self.0.upgrade() {
            let imp = obj.imp();
            // The publisher-timeout clock runs from the answer: a session that ended leaves
            // nothing for the next one, still waiting for its answer, to be timed against.
            *imp.last_seen.lock().unwrap() = started.then(Instant::now);
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

/// A probe that keeps what webrtcsrc sends when a publisher's session ends (flush-start, never
/// followed by a flush-stop, and EOS) at the publisher's pad. Passed on, the flush would leave
/// every element downstream flushing for good (the next publisher's frames refused with
/// FLUSHING, and webrtcsrc unable to flush the next pad, so it never ends that session and
/// takes no further one), and the EOS would end the pipeline.
///
/// Dropped items are returned `Handled` (the probe owns and frees them), not `Drop`:
/// gstreamer-rs hands the probe the item and leaves NULL in its place, and GStreamer 1.22
/// unrefs that NULL after a `Drop` in a push, one GStreamer-CRITICAL per item.
fn keep_session_end_inside(pad: &gst::Pad) {
    pad.add_probe(
        gst::PadProbeType::EVENT_DOWNSTREAM | gst::PadProbeType::EVENT_FLUSH,
        |_, info| match info.event().map(|e| e.type_()) {
            Some(gst::EventType::FlushStart | gst::EventType::FlushStop | gst::EventType::Eos) => {
                gst::PadProbeReturn::Handled
            }
            _ => gst::PadProbeReturn::Ok,
        },
    );
}

/// Drops everything that comes out of `pad` (data and events): a pad nobody uses.
fn discard(pad: &gst::Pad) {
    pad.add_probe(
        gst::PadProbeType::DATA_DOWNSTREAM | gst::PadProbeType::EVENT_FLUSH,
        |_, _| gst::PadProbeReturn::Handled,
    );
}

impl WhipSrc {
    fn warn(&self, what: &str) {
        let Some(text) = self
            .warnings
            .lock()
            .unwrap()
            .message(format!("i2iwhipsrc: {what}"))
        else {
            return;
        };
        gst::element_imp_warning!(self, gst::ResourceError::Read, ("{text}"));
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

    fn endpoint(&self) -> Option<Arc<Endpoint>> {
        self.server.endpoint()
    }

    fn pad_added(&self, pad: &gst::Pad) {
        let name = pad.name();
        keep_session_end_inside(pad);
        if !name.starts_with("video") || self.ended.load(Ordering::SeqCst) {
            // Offers are narrowed to one video m-line, so this is only a safety net (and
            // after the EOS nothing may follow it).
            gst::debug!(CAT, imp = self, "discarding {name}");
            discard(pad);
            return;
        }
        let last_seen = self.last_seen.clone();
        let awaiting = self.awaiting_picture.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            *last_seen.lock().unwrap() = Some(Instant::now());
            awaiting.lock().unwrap().take();
            gst::PadProbeReturn::Ok
        });
        // The first request goes out from the watchdog: the pad is not linked inside
        // whipserversrc yet.
        *self.awaiting_picture.lock().unwrap() = Some(Instant::now() - KEYFRAME_REQUEST_INTERVAL);
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
                self.warn(&format!(
                    "cannot output the publisher's video pad {name}: {err}"
                ));
                discard(pad);
                return;
            }
        }
        *self.publishers.lock().unwrap() += 1;
        self.post("publisher-connected", &name);
    }

    fn pad_removed(&self, pad: &gst::Pad) {
        let name = pad.name();
        if name.starts_with("video") {
            self.awaiting_picture.lock().unwrap().take();
            self.post("publisher-gone", &name);
        }
    }

    /// Asks the publisher for a keyframe while its first frame has not come (see the header).
    fn request_first_picture(&self) {
        {
            let mut awaiting = self.awaiting_picture.lock().unwrap();
            match *awaiting {
                Some(last) if last.elapsed() >= KEYFRAME_REQUEST_INTERVAL => {
                    *awaiting = Some(Instant::now())
                }
                _ => return,
            }
        }
        if let Some(ghost) = self.ghost.lock().unwrap().clone() {
            let sent = ghost.send_event(keyframe_request());
            gst::debug!(
                CAT,
                imp = self,
                "keyframe asked for (reached the publisher: {sent})"
            );
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
                glib::ParamSpecUInt::builder("answer-timeout")
                    .nick("Answer timeout")
                    .blurb("Milliseconds a POST waits for the SDP answer before failing with 504")
                    .minimum(1_000)
                    .maximum(600_000)
                    .default_value(DEFAULT_ANSWER_TIMEOUT)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("busy-policy", BusyPolicy::default())
                    .nick("Busy policy")
                    .blurb("What a new publisher does while one is live: replace it, or be refused with 409 (also while another offer is being answered)")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("publisher-timeout")
                    .nick("Publisher timeout")
                    .blurb("Milliseconds without video after which a publisher (gone without DELETE, or never connected) is ended")
                    .minimum(500)
                    .maximum(600_000)
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
            "answer-timeout" => {
                settings.answer_timeout = value.get().unwrap_or(DEFAULT_ANSWER_TIMEOUT)
            }
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
            "answer-timeout" => settings.answer_timeout.to_value(),
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
        // A source only: nothing inside is a sink the pipeline waits for at EOS.
        obj.set_suppressed_flags(gst::ElementFlags::SINK);
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
    /// stream) goes out of the `src` pad: the publisher's own EOS is dropped inside (the next
    /// publisher continues), so without this the pipeline would never drain, and with no
    /// publisher there is nothing upstream to send it. It is pushed from another thread, as a
    /// source's streaming thread would: the caller holds the pipeline's state lock, and a sink
    /// that has not prerolled yet (no publisher) blocks on the EOS until the pipeline sets it
    /// to PLAYING, which needs that lock.
    fn send_event(&self, event: gst::Event) -> bool {
        if event.type_() == gst::EventType::Eos {
            let Some(ghost) = self.ghost.lock().unwrap().clone() else {
                return false;
            };
            if self.ended.swap(true, Ordering::SeqCst) {
                return true;
            }
            gst::info!(
                CAT,
                imp = self,
                "end of stream requested: sending EOS downstream"
            );
            // Nothing of the publisher's may follow the EOS (events after EOS upset the pads
            // downstream): from here its data stops at its own pad.
            if let Some(target) = ghost.target() {
                discard(&target);
            }
            self.obj().call_async(move |_| {
                ghost.push_event(event);
            });
            return true;
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
            && !self.server.is_running()
            && let Err(msg) = self.start_server()
        {
            gst::element_imp_error!(self, gst::ResourceError::OpenRead, ("{msg}"));
            return Err(gst::StateChangeError);
        }
        if transition == gst::StateChange::ReadyToPaused {
            self.ended.store(false, Ordering::SeqCst);
        }
        let ret = self.parent_change_state(transition);
        if transition == gst::StateChange::ReadyToNull {
            self.server.stop();
        }
        ret
    }
}

impl BinImpl for WhipSrc {
    /// An error from inside `whipserversrc` concerns the publisher's session (webrtcbin
    /// refusing an offer, the publisher's decoder...): that session ends and the endpoint
    /// takes the next publisher; the pipeline goes on. Other messages pass.
    fn handle_message(&self, message: gst::Message) {
        if let gst::MessageView::Error(err) = message.view()
            && let Some(src) = message.src()
            && let Some(inner) = self.inner.lock().unwrap().clone()
            && src.has_as_ancestor(&inner)
            && let Some(endpoint) = self.endpoint()
        {
            let reason = format!("{} ({})", endpoint::error_text(err), src.name());
            gst::info!(
                CAT,
                imp = self,
                "publisher session failed: {reason}; {err:?}"
            );
            endpoint.fail(None, reason);
            return;
        }
        self.parent_handle_message(message)
    }
}

impl WhipSrc {
    fn build_inner(&self) -> Result<(), String> {
        let settings = self.settings.lock().unwrap().clone();
        let inner = gst::ElementFactory::make("whipserversrc")
            .name("whipserversrc")
            .build()
            .map_err(|e| format!("i2iwhipsrc: no whipserversrc element ({e}); build gst-plugin-webrtc-i2i and set GST_PLUGIN_PATH"))?;
        settings.endpoint.apply(&inner, *CAT)?;

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
        if let Some(bin) = inner.downcast_ref::<gst::Bin>() {
            bin.connect_deep_element_added(|_, _, element| {
                let is_depayloader = element
                    .factory()
                    .is_some_and(|f| f.name().starts_with("rtp") && f.name().ends_with("depay"));
                if is_depayloader {
                    tune_depayloader(element);
                }
            });
        }
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

    fn start_server(&self) -> Result<(), String> {
        let settings = self.settings.lock().unwrap().clone();
        let inner = self
            .inner
            .lock()
            .unwrap()
            .clone()
            .ok_or("i2iwhipsrc: no whipserversrc")?;
        let answer_timeout = Duration::from_millis(u64::from(settings.answer_timeout));
        // The signaller gives up a little after us, so our 504 (with its reason) goes out.
        inner.property::<glib::Object>("signaller").set_property(
            "timeout",
            u32::try_from(answer_timeout.as_secs() + 2).unwrap_or(u32::MAX),
        );
        let endpoint = Endpoint::new(
            Kind::Whip,
            inner,
            Arc::new(Events(self.obj().downgrade())),
            Accepts::ALL,
            settings.endpoint.access(),
            Limits {
                one_at_a_time: true,
                max_sessions: 1,
                max_pending: 1,
                connect_timeout: None,
                answer_timeout,
            },
            None,
        );
        let host_addr = &settings.endpoint.host_addr;
        let server = Server::start(host_addr, endpoint.clone())
            .map_err(|e| format!("i2iwhipsrc: WHIP endpoint {host_addr}: {e}"))?;
        gst::info!(
            CAT,
            imp = self,
            "WHIP endpoint http://{}/whip/endpoint",
            server.addr
        );

        // The watchdog: a publisher gone without DELETE (or never connected) sends no video.
        let weak = self.obj().downgrade();
        let watched = Arc::downgrade(&endpoint);
        server.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let (Some(obj), Some(endpoint)) = (weak.upgrade(), watched.upgrade()) else {
                    return;
                };
                let imp = obj.imp();
                imp.request_first_picture();
                let limit = Duration::from_millis(u64::from(
                    imp.settings.lock().unwrap().publisher_timeout,
                ));
                let stale = imp
                    .last_seen
                    .lock()
                    .unwrap()
                    .is_some_and(|t| t.elapsed() > limit);
                drop(obj);
                if !stale {
                    continue;
                }
                for id in endpoint.live() {
                    endpoint
                        .end_for(
                            &id,
                            &format!(
                                "sent no video for {} ms and did not DELETE (publisher-timeout): the endpoint takes a new publisher",
                                limit.as_millis()
                            ),
                        )
                        .await;
                }
                if let Some(obj) = weak.upgrade() {
                    *obj.imp().last_seen.lock().unwrap() = None;
                }
            }
        });
        self.server.set(server);
        Ok(())
    }
}
