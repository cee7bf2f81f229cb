// SPDX-License-Identifier: MPL-2.0
//! The HTTP side of `i2iwhipsrc` and `i2iwhepsink`: one axum server per element in front of
//! the upstream signaller, which we drive through its `post` / `delete` action signals (the way
//! gst-plugins-rs documents for an external HTTP server).
//!
//! Why not the signaller's own warp server: it answers a malformed SDP with a bare 406, a DELETE
//! of an unknown resource with 200, has no authentication and no limits, and the WHEP one only
//! listens once frames flow. Here:
//! - `POST /whip/endpoint` (or `/whep/endpoint`): with `token` set, `Authorization: Bearer
//!   <token>` (else 401); Content-Type `application/sdp` (else 415); an offer that passes
//!   [`crate::offer::check_offer`] (else 400, 413 or 415 with the reason); room for the session
//!   (WHIP: the busy policy, else 409; WHEP: `max-viewers` and `max-pending`, else 503 with
//!   `Retry-After`); then 201 with the answer and `Location: /whip/resource/<id>`. A WHEP offer
//!   that comes before any frame reached the sink waits for it (10 s at most, then 503);
//! - `DELETE /whip/resource/<id>`: only with the token the session was created with (401),
//!   200, or 404 for a resource that does not exist;
//! - `PATCH` (trickle ICE): the same authentication, then 405: the offer must carry its
//!   candidates;
//! - CORS headers only for the origins in `allowed-origins` (`*` for any);
//! - sessions end when their peer connection fails or closes, when WebRTC fails on them
//!   (`i2iwhipsrc` calls [`Endpoint::fail`], webrtcsink ends a failed viewer's session itself
//!   and [`Endpoint::forget`] follows; the POST waiting for its answer gets 400 at once), and
//!   (WHEP) when they have not connected `connect-timeout` ms after their answer;
//! - at most [`MAX_CONNECTIONS`] HTTP connections at once (more wait in the kernel's accept
//!   queue, costing the process no descriptor), each closed after [`IDLE_TIMEOUT`] without
//!   traffic; an offer's body must arrive within [`BODY_TIMEOUT`];
//! - every refusal is written in the response body and reported to the element (a rate-limited
//!   bus warning); nothing a client sends ends the pipeline.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use gst::glib;
use gst::prelude::*;

use crate::offer::{self, Accepts, Refusal, Side};

/// Which side: the paths, the peers and the offers taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Whip,
    Whep,
}

impl Kind {
    pub fn root(self) -> &'static str {
        match self {
            Kind::Whip => "whip",
            Kind::Whep => "whep",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Whip => "WHIP",
            Kind::Whep => "WHEP",
        }
    }

    /// The element serving this side, for messages.
    pub fn element(self) -> &'static str {
        match self {
            Kind::Whip => "i2iwhipsrc",
            Kind::Whep => "i2iwhepsink",
        }
    }

    fn default_host_addr(self) -> &'static str {
        match self {
            Kind::Whip => "http://127.0.0.1:8190",
            Kind::Whep => "http://127.0.0.1:8191",
        }
    }

    fn peers(self) -> &'static str {
        match self {
            Kind::Whip => "publishers",
            Kind::Whep => "viewers",
        }
    }

    fn peer(self) -> &'static str {
        match self {
            Kind::Whip => "publisher",
            Kind::Whep => "viewer",
        }
    }

    fn side(self) -> Side {
        match self {
            Kind::Whip => Side::Publisher,
            Kind::Whep => Side::Viewer,
        }
    }
}

pub const DEFAULT_LOCAL_ADDRESSES: &str = "127.0.0.1";

/// The endpoint properties `i2iwhipsrc` and `i2iwhepsink` share (`host-addr`,
/// `local-addresses`, `stun-server`, `token`, `allowed-origins`), defined once: their
/// ParamSpecs, their values, and how they are set on the wrapped WebRTC element.
#[derive(Debug, Clone)]
pub struct EndpointSettings {
    kind: Kind,
    pub host_addr: String,
    pub local_addresses: String,
    pub stun_server: Option<String>,
    pub token: Option<String>,
    pub allowed_origins: Option<String>,
}

impl EndpointSettings {
    pub fn new(kind: Kind) -> Self {
        EndpointSettings {
            kind,
            host_addr: kind.default_host_addr().into(),
            local_addresses: DEFAULT_LOCAL_ADDRESSES.into(),
            stun_server: None,
            token: None,
            allowed_origins: None,
        }
    }

    pub fn param_specs(kind: Kind) -> Vec<glib::ParamSpec> {
        let root = kind.root();
        let listen = match kind {
            Kind::Whip => String::new(),
            Kind::Whep => " (listening from READY; offers are answered once frames flow)".into(),
        };
        vec![
            glib::ParamSpecString::builder("host-addr")
                .nick("Host address")
                .blurb(&format!(
                    "HTTP address the {} endpoint listens on; {} POST to <host-addr>/{root}/endpoint{listen}",
                    kind.name(),
                    kind.peers()
                ))
                .default_value(Some(kind.default_host_addr()))
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
                .blurb(&format!(
                    "stun://host:port for {} behind NAT; unset (default) for none",
                    kind.peers()
                ))
                .mutable_ready()
                .build(),
            glib::ParamSpecString::builder("token")
                .nick("Bearer token")
                .blurb(&format!(
                    "When set, {} must send 'Authorization: Bearer <token>' with their offer, and a session's DELETE or PATCH must carry the token it was created with (401 otherwise); unset (default): no authentication",
                    kind.peers()
                ))
                .mutable_ready()
                .build(),
            glib::ParamSpecString::builder("allowed-origins")
                .nick("Allowed origins")
                .blurb("Comma-separated web origins (http://host:port) whose pages may use the endpoint from a browser (CORS), or * for any; unset (default): none, only same-origin pages and non-browser clients")
                .mutable_ready()
                .build(),
        ]
    }

    /// Sets property `name`; false when it is not one of these.
    pub fn set(&mut self, name: &str, value: &glib::Value) -> bool {
        let text = || {
            value
                .get::<Option<String>>()
                .unwrap_or_default()
                .filter(|s| !s.is_empty())
        };
        match name {
            "host-addr" => {
                self.host_addr = text().unwrap_or_else(|| self.kind.default_host_addr().into())
            }
            "local-addresses" => self.local_addresses = text().unwrap_or_default(),
            "stun-server" => self.stun_server = text(),
            "token" => self.token = text(),
            "allowed-origins" => self.allowed_origins = text(),
            _ => return false,
        }
        true
    }

    /// Property `name`, or None when it is not one of these.
    pub fn get(&self, name: &str) -> Option<glib::Value> {
        Some(match name {
            "host-addr" => self.host_addr.to_value(),
            "local-addresses" => self.local_addresses.to_value(),
            "stun-server" => self.stun_server.to_value(),
            "token" => self.token.to_value(),
            "allowed-origins" => self.allowed_origins.to_value(),
            _ => return None,
        })
    }

    /// Checks `host-addr` and sets the rest on the wrapped `whipserversrc` / `whepserversink`:
    /// its signaller's own HTTP server off (ours serves the endpoint), the STUN server, and
    /// the extra ICE addresses.
    pub fn apply(&self, element: &gst::Element, cat: gst::DebugCategory) -> Result<(), String> {
        if url_is_bad(&self.host_addr) {
            return Err(format!(
                "{}: host-addr {:?} is not an http://host:port address",
                self.kind.element(),
                self.host_addr
            ));
        }
        let signaller = element.property::<glib::Object>("signaller");
        signaller.set_property("host-addr", "");
        signaller.set_property("stun-server", self.stun_server.as_deref());
        element.set_property("stun-server", self.stun_server.as_deref());
        crate::loopback::hook(
            element,
            crate::loopback::parse_list(&self.local_addresses),
            cat,
        );
        Ok(())
    }

    /// Who may use the endpoint.
    pub fn access(&self) -> Access {
        Access {
            token: self.token.clone(),
            origins: Origins::parse(self.allowed_origins.as_deref().unwrap_or("")),
        }
    }
}

/// Web origins whose pages may read the endpoint's answers (CORS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origins {
    Any,
    List(Vec<String>),
}

impl Origins {
    /// `*`, or a comma-separated list of origins (trailing slashes ignored).
    pub fn parse(list: &str) -> Origins {
        let origins: Vec<String> = list
            .split(',')
            .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
            .filter(|o| !o.is_empty())
            .collect();
        if origins.iter().any(|o| o == "*") {
            Origins::Any
        } else {
            Origins::List(origins)
        }
    }

    /// The `Access-Control-Allow-Origin` value for a request from `origin`, if it may.
    fn allow(&self, origin: Option<&str>) -> Option<HeaderValue> {
        match self {
            Origins::Any => Some(HeaderValue::from_static("*")),
            Origins::List(list) => {
                let origin = origin?;
                let wanted = origin.trim_end_matches('/').to_ascii_lowercase();
                list.contains(&wanted)
                    .then(|| HeaderValue::from_str(origin).ok())
                    .flatten()
            }
        }
    }
}

/// The token and origins an endpoint checks.
#[derive(Debug, Clone)]
pub struct Access {
    pub token: Option<String>,
    pub origins: Origins,
}

/// The bearer token of a request's `Authorization` header (RFC 6750), if any.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// Equality that takes as long whatever the first difference (tokens are secrets).
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// How many sessions an endpoint holds, and for how long an unconnected one.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// WHIP: one session at a time, whose busy policy [`Events::busy`] gives.
    pub one_at_a_time: bool,
    /// Sessions in all, answered or not (WHEP `max-viewers`).
    pub max_sessions: usize,
    /// Sessions not connected yet (WHEP `max-pending`).
    pub max_pending: usize,
    /// How long a session may stay unconnected after its answer (WHEP `connect-timeout`).
    pub connect_timeout: Option<Duration>,
    /// How long a POST waits for the WebRTC element's answer.
    pub answer_timeout: Duration,
}

/// What a new publisher does while one is live (WHIP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    Replace,
    Refuse,
}

/// What the element is told about its endpoint.
pub trait Events: Send + Sync + 'static {
    /// Something for the bus: a refused request, a session ended for cause (rate-limited by
    /// the element).
    fn warn(&self, what: &str);
    /// WHIP's busy policy now (read at each offer).
    fn busy(&self) -> Busy {
        Busy::Refuse
    }
    /// A session started (201 sent) or ended (DELETE, replacement, timeout, failure).
    fn session(&self, id: &str, started: bool);
}

/// Where a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The offer went to the WebRTC element; the POST waits for its answer.
    Answering,
    /// The answer went out (201); the peer has not connected yet.
    Answered,
    Connected,
}

struct Session {
    /// The bearer token the session was created with: only that one may DELETE or PATCH it.
    token: Option<String>,
    phase: Phase,
    /// When it entered its phase.
    since: Instant,
    /// Tells the POST waiting for the answer why the session ended first.
    abort: Option<tokio::sync::oneshot::Sender<Refusal>>,
}

pub struct Endpoint {
    kind: Kind,
    /// The WebRTC element (`whipserversrc` / `whepserversink`); its `signaller` property is
    /// read at each use (a plain `glib::Object` cannot be kept across threads).
    element: gst::Element,
    events: Arc<dyn Events>,
    sessions: Mutex<BTreeMap<String, Session>>,
    accepts: Accepts,
    access: Access,
    limits: Limits,
    /// WHIP: webrtcsrc holds one session, so one offer at a time goes to it (and the last
    /// one is ended first when a publisher replaces it).
    turn: tokio::sync::Mutex<()>,
    /// WHEP: true once the WebRTC sink has probed its codecs on the first frames and started
    /// its signaller. An offer handed over earlier starts a session that is renegotiated
    /// as soon as the probe ends, which a WHEP viewer cannot follow (its ICE fails), so
    /// offers wait for this (at most `READY_WAIT`, then 503 with Retry-After).
    ready: Option<tokio::sync::watch::Receiver<bool>>,
    webrtcbin_ready: Mutex<Option<glib::SignalHandlerId>>,
}

/// HTTP connections an endpoint serves at once.
pub const MAX_CONNECTIONS: usize = 64;

/// A connection with no traffic this long is closed: longer than the longest answer (a WHIP
/// offer waiting for the one before it, then for its own answer), since the server reads the
/// connection while a request is answered.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long an offer's body may take to arrive.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a WHEP offer waits for the first frames before it is answered 503.
pub const READY_WAIT: Duration = Duration::from_secs(10);

/// How long a DELETE waits for the WebRTC element to end a session.
const END_WAIT: Duration = Duration::from_secs(5);

/// True when `addr` is not an `http://host:port` the endpoint can bind.
pub fn url_is_bad(addr: &str) -> bool {
    let Some(rest) = addr.strip_prefix("http://") else {
        return true;
    };
    let hostport = rest.trim_end_matches('/');
    match hostport.rsplit_once(':') {
        Some((host, port)) => host.is_empty() || port.parse::<u16>().is_err(),
        None => true,
    }
}

/// What an error message says, for people: its text and the last line of its debug text
/// (where GStreamer elements put the particulars).
pub fn error_text(err: &gst::message::Error) -> String {
    let detail = err
        .debug()
        .and_then(|d| d.lines().last().map(|l| l.trim().to_string()))
        .filter(|d| !d.is_empty());
    match detail {
        Some(detail) => format!("{}: {detail}", err.error()),
        None => err.error().to_string(),
    }
}

/// The nick of an enum property (`connection-state` of webrtcbin: "connected", "failed"...).
fn enum_nick(object: &gst::Element, property: &str) -> Option<String> {
    let value = object.property_value(property);
    glib::EnumValue::from_value(&value).map(|(_, v)| v.nick().to_string())
}

impl Endpoint {
    pub fn new(
        kind: Kind,
        element: gst::Element,
        events: Arc<dyn Events>,
        accepts: Accepts,
        access: Access,
        limits: Limits,
        ready: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Arc<Self> {
        let endpoint = Arc::new(Endpoint {
            kind,
            element,
            events,
            sessions: Mutex::new(BTreeMap::new()),
            accepts,
            access,
            limits,
            turn: tokio::sync::Mutex::new(()),
            ready,
            webrtcbin_ready: Mutex::new(None),
        });
        // Each session's webrtcbin: its connection state ends the session when it fails,
        // and errors inside it are matched to the session.
        let weak = Arc::downgrade(&endpoint);
        let id = endpoint
            .signaller()
            .connect("webrtcbin-ready", false, move |args| {
                let id = args.get(1).and_then(|v| v.get::<String>().ok())?;
                let webrtcbin = args.get(2).and_then(|v| v.get::<gst::Element>().ok())?;
                if let Some(endpoint) = weak.upgrade() {
                    endpoint.watch(&id, &webrtcbin);
                }
                None
            });
        *endpoint.webrtcbin_ready.lock().unwrap() = Some(id);
        endpoint
    }

    fn signaller(&self) -> glib::Object {
        self.element.property::<glib::Object>("signaller")
    }

    /// Runs `f` on the endpoints' runtime (from GStreamer threads).
    pub fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(&self, f: F) {
        if let Ok(runtime) = runtime() {
            runtime.spawn(f);
        }
    }

    /// The sessions in progress, answered or not.
    pub fn live(&self) -> Vec<String> {
        self.sessions.lock().unwrap().keys().cloned().collect()
    }

    /// Follows session `id`'s webrtcbin: connected, or failed / closed (the session ends).
    fn watch(self: &Arc<Self>, id: &str, webrtcbin: &gst::Element) {
        let weak = Arc::downgrade(self);
        let id = id.to_string();
        webrtcbin.connect_notify(Some("connection-state"), move |webrtcbin, _| {
            let Some(endpoint) = weak.upgrade() else {
                return;
            };
            match enum_nick(webrtcbin, "connection-state").as_deref() {
                Some("connected") => endpoint.connected(&id),
                Some(state @ ("failed" | "closed")) => {
                    let reason = format!("its WebRTC connection {state}");
                    let id = id.clone();
                    let ended = Arc::downgrade(&endpoint);
                    endpoint.spawn(async move {
                        if let Some(endpoint) = ended.upgrade() {
                            endpoint.end_for(&id, &reason).await;
                        }
                    });
                }
                _ => (),
            }
        });
    }

    fn connected(&self, id: &str) {
        if let Some(session) = self.sessions.lock().unwrap().get_mut(id) {
            session.phase = Phase::Connected;
            session.since = Instant::now();
        }
    }

    /// WebRTC failed on session `id` (all sessions when `None`): it ends, and a POST still
    /// waiting for its answer gets 400 with `reason` at once. The pipeline goes on.
    pub fn fail(self: &Arc<Self>, id: Option<String>, reason: String) {
        let weak = Arc::downgrade(self);
        self.spawn(async move {
            let Some(endpoint) = weak.upgrade() else {
                return;
            };
            let ids = match id {
                Some(id) => vec![id],
                None => endpoint.live(),
            };
            for id in ids {
                let refusal = (
                    StatusCode::BAD_REQUEST,
                    format!("the WebRTC element could not take this offer: {reason}"),
                );
                if endpoint.end(&id, Some(refusal)).await {
                    endpoint.events.warn(&format!(
                        "{} {id}: WebRTC failed ({reason}): session ended, the endpoint takes the next one",
                        endpoint.kind.peer()
                    ));
                }
            }
        });
    }

    /// Forgets session `id`, which the WebRTC element ended by itself (webrtcsink ends a
    /// viewer's session when WebRTC fails on it); a POST still waiting for its answer gets
    /// 400 at once.
    pub fn forget(&self, id: &str) {
        let Some(session) = self.sessions.lock().unwrap().remove(id) else {
            return;
        };
        if let Some(tx) = session.abort {
            let _ = tx.send((
                StatusCode::BAD_REQUEST,
                "the WebRTC element could not take this offer: it ended the session before answering".into(),
            ));
        }
        self.events.session(id, false);
    }

    /// Ends session `id` with a warning saying why; false when there is no such session.
    pub async fn end_for(&self, id: &str, reason: &str) -> bool {
        let refusal = (
            StatusCode::CONFLICT,
            format!("the session ended before its answer: {reason}"),
        );
        let ended = self.end(id, Some(refusal)).await;
        if ended {
            self.events.warn(&format!(
                "{} {id}: {reason}: session ended",
                self.kind.peer()
            ));
        }
        ended
    }

    /// Ends session `id` (replaced, timed out, failed, DELETE); a POST still waiting for its
    /// answer is given `abort`. False when there is no such session.
    pub async fn end(&self, id: &str, abort: Option<Refusal>) -> bool {
        let Some(session) = self.sessions.lock().unwrap().remove(id) else {
            return false;
        };
        if let (Some(tx), Some(refusal)) = (session.abort, abort) {
            let _ = tx.send(refusal);
        }
        let (promise, future) = gst::Promise::new_future();
        self.signaller()
            .emit_by_name::<()>("delete", &[&id.to_string(), &promise]);
        let _ = tokio::time::timeout(END_WAIT, future).await;
        self.events.session(id, false);
        true
    }

    /// Ends the sessions that did not connect within `connect-timeout` of their answer.
    async fn expire(&self) {
        let Some(limit) = self.limits.connect_timeout else {
            return;
        };
        let stale: Vec<String> = self
            .sessions
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| s.phase == Phase::Answered && s.since.elapsed() > limit)
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            self.end_for(
                &id,
                &format!(
                    "did not connect within {} ms of its answer (connect-timeout)",
                    limit.as_millis()
                ),
            )
            .await;
        }
    }

    fn refuse(&self, status: StatusCode, text: String) -> Response {
        self.events
            .warn(&format!("{} endpoint: {status}: {text}", self.kind.name()));
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            text + "\n",
        )
            .into_response()
    }

    /// 503 with `Retry-After: secs`.
    fn busy(&self, text: String, secs: u64) -> Response {
        let mut response = self.refuse(StatusCode::SERVICE_UNAVAILABLE, text);
        if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
    }

    /// The request's bearer token when the endpoint takes it, else the 401 answer.
    fn authorize(&self, headers: &HeaderMap) -> Result<Option<String>, Box<Response>> {
        let presented = bearer(headers);
        let Some(token) = &self.access.token else {
            return Ok(presented);
        };
        if presented.as_deref().is_some_and(|p| same_secret(p, token)) {
            return Ok(presented);
        }
        let why = if presented.is_some() {
            "the bearer token is not this endpoint's"
        } else {
            "this endpoint needs 'Authorization: Bearer <token>' (its token property)"
        };
        let mut response = self.refuse(StatusCode::UNAUTHORIZED, why.into());
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"i2i\""),
        );
        Err(Box::new(response))
    }

    /// Waits until the WebRTC element takes offers (see `ready`); false after `READY_WAIT`.
    async fn wait_ready(&self) -> bool {
        let Some(mut ready) = self.ready.clone() else {
            return true;
        };
        matches!(
            tokio::time::timeout(READY_WAIT, ready.wait_for(|r| *r)).await,
            Ok(Ok(_))
        )
    }

    /// Room for a new session, ending the one it replaces (WHIP `replace`); else the refusal.
    async fn admit(&self) -> Result<(), Response> {
        let (total, pending, first) = {
            let sessions = self.sessions.lock().unwrap();
            let pending = sessions
                .values()
                .filter(|s| s.phase != Phase::Connected)
                .count();
            (sessions.len(), pending, sessions.keys().next().cloned())
        };
        if self.limits.one_at_a_time {
            let Some(live) = first else {
                return Ok(());
            };
            if self.events.busy() == Busy::Refuse {
                return Err(self.refuse(
                    StatusCode::CONFLICT,
                    format!(
                        "a publisher is live (resource {live}); it must DELETE first (busy-policy=refuse)"
                    ),
                ));
            }
            for id in self.live() {
                self.end(
                    &id,
                    Some((
                        StatusCode::CONFLICT,
                        "replaced by a newer publisher (busy-policy=replace)".into(),
                    )),
                )
                .await;
            }
            return Ok(());
        }
        let retry = self.limits.connect_timeout.map_or(2, |t| t.as_secs() + 1);
        if total >= self.limits.max_sessions {
            return Err(self.busy(
                format!(
                    "{total} {} already, the most this endpoint serves (max-viewers={}): retry later",
                    self.kind.peers(),
                    self.limits.max_sessions
                ),
                retry,
            ));
        }
        if pending >= self.limits.max_pending {
            return Err(self.busy(
                format!(
                    "{pending} {} are still connecting, the most at once (max-pending={}): retry",
                    self.kind.peers(),
                    self.limits.max_pending
                ),
                retry,
            ));
        }
        Ok(())
    }

    async fn post(self: Arc<Self>, headers: HeaderMap, body: Body) -> Response {
        let token = match self.authorize(&headers) {
            Ok(token) => token,
            Err(response) => return *response,
        };
        let body = match tokio::time::timeout(
            BODY_TIMEOUT,
            axum::body::to_bytes(body, offer::MAX_OFFER_BYTES + 1),
        )
        .await
        {
            Ok(Ok(body)) => body,
            Ok(Err(_)) => {
                return self.refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "{} offer over the {} byte limit",
                        self.kind.name(),
                        offer::MAX_OFFER_BYTES
                    ),
                );
            }
            Err(_) => {
                return self.refuse(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the offer did not arrive within {} ms",
                        BODY_TIMEOUT.as_millis()
                    ),
                );
            }
        };
        let sdp_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("application/sdp")
            })
            .unwrap_or(false);
        if !sdp_type {
            return self.refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type must be application/sdp (the SDP offer)".into(),
            );
        }
        let offer = match offer::check_offer(self.kind.side(), self.accepts, &body) {
            Ok(offer) => offer,
            Err((status, text)) => return self.refuse(status, text),
        };
        if !self.wait_ready().await {
            return self.busy(
                format!(
                    "no video has reached the {} endpoint yet (it answers once frames flow): retry",
                    self.kind.name()
                ),
                1,
            );
        }
        // WHIP: one offer at a time (webrtcsrc holds one session); with busy-policy=refuse
        // a second one is refused at once rather than queued.
        let _turn = if self.limits.one_at_a_time {
            match self.events.busy() {
                Busy::Refuse => match self.turn.try_lock() {
                    Ok(turn) => Some(turn),
                    Err(_) => {
                        return self.refuse(
                            StatusCode::CONFLICT,
                            "another publisher's offer is being answered (busy-policy=refuse): retry if it fails".into(),
                        );
                    }
                },
                Busy::Replace => Some(self.turn.lock().await),
            }
        } else {
            None
        };
        if let Err(response) = self.admit().await {
            return response;
        }

        let id = glib::uuid_string_random().to_string();
        let (abort_tx, mut abort_rx) = tokio::sync::oneshot::channel();
        self.sessions.lock().unwrap().insert(
            id.clone(),
            Session {
                token,
                phase: Phase::Answering,
                since: Instant::now(),
                abort: Some(abort_tx),
            },
        );
        let (promise, future) = gst::Promise::new_future();
        self.signaller().emit_by_name::<()>(
            "post",
            &[
                &Some(id.clone()),
                &glib::Bytes::from_owned(offer.sdp),
                &promise,
            ],
        );
        let wait = self.limits.answer_timeout;
        let reply = tokio::select! {
            reply = tokio::time::timeout(wait, future) => reply,
            aborted = &mut abort_rx => {
                let (status, text) = aborted.unwrap_or((
                    StatusCode::CONFLICT,
                    "the session ended before its answer".into(),
                ));
                return self.refuse(status, text);
            }
        };
        let reply = match reply {
            Ok(Ok(Some(reply))) => reply,
            Ok(_) => {
                self.end(&id, None).await;
                return self.refuse(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the WebRTC element gave no answer (is the pipeline running?)".into(),
                );
            }
            Err(_) => {
                self.end(&id, None).await;
                return self.refuse(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("no SDP answer within {} ms", wait.as_millis()),
                );
            }
        };
        let status = reply
            .get::<u32>("status")
            .ok()
            .and_then(|s| u16::try_from(s).ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = reply
            .get::<glib::Bytes>("body")
            .map(|b| b.to_vec())
            .unwrap_or_default();
        if status != StatusCode::CREATED {
            self.end(&id, None).await;
            let text = String::from_utf8_lossy(&body).trim().to_string();
            return self.refuse(
                status,
                format!(
                    "the WebRTC element refused the offer: {}",
                    if text.is_empty() {
                        "no reason given"
                    } else {
                        &text
                    }
                ),
            );
        }
        {
            let mut sessions = self.sessions.lock().unwrap();
            let Some(session) = sessions.get_mut(&id) else {
                drop(sessions);
                let (status, text) = abort_rx.try_recv().unwrap_or((
                    StatusCode::CONFLICT,
                    "the session ended before its answer".into(),
                ));
                return self.refuse(status, text);
            };
            session.abort = None;
            if session.phase == Phase::Answering {
                session.phase = Phase::Answered;
                session.since = Instant::now();
            }
        }
        let mut response = Response::builder().status(status);
        if let Ok(h) = reply.get::<gst::Structure>("headers") {
            for (name, value) in h.iter() {
                let Ok(value) = value.get::<String>() else {
                    continue;
                };
                if !name.eq_ignore_ascii_case("location") {
                    response = response.header(name.as_str(), value);
                }
            }
        }
        response = response.header(
            header::LOCATION,
            format!("/{}/resource/{id}", self.kind.root()),
        );
        self.events.session(&id, true);
        response
            .body(Body::from(body))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    }

    /// The 401 / 404 answer for a request on resource `id`, or None when it may go on.
    fn check_resource(&self, headers: &HeaderMap, id: &str) -> Option<Response> {
        let presented = match self.authorize(headers) {
            Ok(presented) => presented,
            Err(response) => return Some(*response),
        };
        let creator = {
            let sessions = self.sessions.lock().unwrap();
            match sessions.get(id) {
                Some(session) => session.token.clone(),
                None => {
                    drop(sessions);
                    return Some(self.refuse(
                        StatusCode::NOT_FOUND,
                        format!(
                            "no {} resource {id:?}: it ended or never existed",
                            self.kind.name()
                        ),
                    ));
                }
            }
        };
        let same = match (&creator, &presented) {
            (None, _) => true,
            (Some(c), Some(p)) => same_secret(c, p),
            (Some(_), None) => false,
        };
        if !same {
            let mut response = self.refuse(
                StatusCode::UNAUTHORIZED,
                format!(
                    "resource {id:?} takes only the bearer token its {} was created with",
                    self.kind.peer()
                ),
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"i2i\""),
            );
            return Some(response);
        }
        None
    }

    async fn delete(self: Arc<Self>, headers: HeaderMap, id: String) -> Response {
        if let Some(refused) = self.check_resource(&headers, &id) {
            return refused;
        }
        if self
            .end(
                &id,
                Some((StatusCode::CONFLICT, "DELETEd before its answer".into())),
            )
            .await
        {
            StatusCode::OK.into_response()
        } else {
            self.refuse(
                StatusCode::NOT_FOUND,
                format!(
                    "no {} resource {id:?}: it ended or never existed",
                    self.kind.name()
                ),
            )
        }
    }

    async fn patch(self: Arc<Self>, headers: HeaderMap, id: String) -> Response {
        if let Some(refused) = self.check_resource(&headers, &id) {
            return refused;
        }
        self.refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "trickle ICE is not supported: send the offer once ICE gathering is complete".into(),
        )
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Some(id) = self.webrtcbin_ready.lock().unwrap().take() {
            self.signaller().disconnect(id);
        }
    }
}

/// CORS for the allowed origins only: a page from anywhere else cannot read the answers (and
/// its browser does not send the POST at all, an `application/sdp` body needs a preflight).
async fn cors(
    State(endpoint): State<Arc<Endpoint>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let preflight = request.method() == Method::OPTIONS;
    let allow = endpoint.access.origins.allow(
        request
            .headers()
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok()),
    );
    let mut response = if preflight {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(request).await
    };
    let h = response.headers_mut();
    if preflight {
        h.insert("Accept-Post", HeaderValue::from_static("application/sdp"));
    }
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    let Some(origin) = allow else {
        return response;
    };
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, DELETE, PATCH, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Content-Type, Authorization, If-Match"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location, Link, ETag"),
    );
    response
}

pub fn router(endpoint: Arc<Endpoint>) -> Router {
    let root = endpoint.kind.root();
    Router::new()
        .route(
            &format!("/{root}/endpoint"),
            post(
                |State(e): State<Arc<Endpoint>>, headers: HeaderMap, body: Body| {
                    e.post(headers, body)
                },
            ),
        )
        .route(
            &format!("/{root}/resource/{{id}}"),
            delete(
                |State(e): State<Arc<Endpoint>>, headers: HeaderMap, Path(id): Path<String>| {
                    e.delete(headers, id)
                },
            )
            .patch(
                |State(e): State<Arc<Endpoint>>, headers: HeaderMap, Path(id): Path<String>| {
                    e.patch(headers, id)
                },
            ),
        )
        .layer(axum::middleware::from_fn_with_state(endpoint.clone(), cors))
        .with_state(endpoint)
}

/// A connection that counts against [`MAX_CONNECTIONS`] until it closes, and fails after
/// [`IDLE_TIMEOUT`] without traffic.
struct Connection {
    stream: tokio::net::TcpStream,
    idle: Pin<Box<tokio::time::Sleep>>,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Connection {
    fn busy(&mut self) {
        self.idle
            .as_mut()
            .reset(tokio::time::Instant::now() + IDLE_TIMEOUT);
    }

    fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        self.idle.as_mut().poll(cx).is_ready()
    }
}

fn idle_error() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "no traffic within the idle timeout",
    )
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let filled = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > filled {
                    self.busy();
                }
                Poll::Ready(result)
            }
            Poll::Pending if self.timed_out(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_write(cx, buf) {
            Poll::Ready(result) => {
                self.busy();
                Poll::Ready(result)
            }
            Poll::Pending if self.timed_out(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Accepts a connection only while fewer than [`MAX_CONNECTIONS`] are open.
struct Listener {
    tcp: tokio::net::TcpListener,
    slots: Arc<tokio::sync::Semaphore>,
}

impl axum::serve::Listener for Listener {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Connection, SocketAddr) {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        loop {
            match self.tcp.accept().await {
                Ok((stream, addr)) => {
                    let idle = Box::pin(tokio::time::sleep(IDLE_TIMEOUT));
                    return (
                        Connection {
                            stream,
                            idle,
                            _slot: slot,
                        },
                        addr,
                    );
                }
                // Out of descriptors, a connection reset before it was taken: try again.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// The one tokio runtime of every WHIP/WHEP endpoint in the process, started with the first
/// (gst-plugins-rs's elements share one the same way): an element's server runs on it from
/// READY to NULL and shuts down gracefully, and no element starts threads of its own.
static RUNTIME: LazyLock<Result<tokio::runtime::Runtime, String>> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("i2i-webrtc-http")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the HTTP runtime: {e}"))
});

/// The endpoints' runtime, or why it could not start.
fn runtime() -> Result<&'static tokio::runtime::Runtime, String> {
    RUNTIME.as_ref().map_err(Clone::clone)
}

/// The running server, on the shared runtime; shut down with the element.
pub struct Server {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub addr: SocketAddr,
    pub endpoint: Arc<Endpoint>,
}

impl Server {
    /// Binds `host_addr` (http://host:port) at once, so a taken port fails the state change.
    pub fn start(host_addr: &str, endpoint: Arc<Endpoint>) -> Result<Server, String> {
        let hostport = host_addr
            .strip_prefix("http://")
            .unwrap_or(host_addr)
            .trim_end_matches('/');
        let runtime = runtime()?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(hostport))
            .map_err(|e| {
                format!("cannot listen on {hostport}: {e}; pick a free port in host-addr")
            })?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("cannot read the bound address: {e}"))?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = router(endpoint.clone());
        let listener = Listener {
            tcp: listener,
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
        };
        runtime.spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        if endpoint.limits.connect_timeout.is_some() {
            let weak: Weak<Endpoint> = Arc::downgrade(&endpoint);
            runtime.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                loop {
                    tick.tick().await;
                    let Some(endpoint) = weak.upgrade() else {
                        return;
                    };
                    endpoint.expire().await;
                }
            });
        }
        Ok(Server {
            shutdown: Some(tx),
            addr,
            endpoint,
        })
    }

    pub fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(&self, f: F) {
        self.endpoint.spawn(f);
    }
}

/// An element's server while it runs (READY to NULL).
#[derive(Default)]
pub struct Running(Mutex<Option<Server>>);

impl Running {
    pub fn is_running(&self) -> bool {
        self.0.lock().unwrap().is_some()
    }

    pub fn set(&self, server: Server) {
        *self.0.lock().unwrap() = Some(server);
    }

    pub fn stop(&self) {
        self.0.lock().unwrap().take();
    }

    pub fn endpoint(&self) -> Option<Arc<Endpoint>> {
        self.0.lock().unwrap().as_ref().map(|s| s.endpoint.clone())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init() {
        let _ = gst::init();
    }

    #[test]
    fn host_addr_must_be_http_host_port() {
        assert!(!url_is_bad("http://127.0.0.1:8190"));
        assert!(!url_is_bad("http://0.0.0.0:8190/"));
        assert!(url_is_bad("127.0.0.1:8190"));
        assert!(url_is_bad("http://127.0.0.1"));
        assert!(url_is_bad("http://127.0.0.1:99999"));
    }

    #[test]
    fn shared_properties_are_set_read_and_defaulted_per_side() {
        init();
        let mut whep = EndpointSettings::new(Kind::Whep);
        assert_eq!(whep.host_addr, "http://127.0.0.1:8191");
        assert_eq!(
            EndpointSettings::new(Kind::Whip).host_addr,
            "http://127.0.0.1:8190"
        );
        assert!(whep.set("stun-server", &"stun://10.0.0.1:3478".to_value()));
        assert!(whep.set("stun-server", &"".to_value()));
        assert_eq!(whep.stun_server, None, "empty is unset");
        assert!(whep.set("host-addr", &None::<String>.to_value()));
        assert_eq!(
            whep.host_addr, "http://127.0.0.1:8191",
            "unset is the default"
        );
        assert!(whep.set("token", &"s3cret".to_value()));
        assert_eq!(whep.access().token.as_deref(), Some("s3cret"));
        assert!(whep.set("token", &"".to_value()));
        assert_eq!(whep.access().token, None, "empty is no token");
        assert!(!whep.set("playout-delay", &0u32.to_value()));
        assert_eq!(
            whep.get("local-addresses")
                .unwrap()
                .get::<String>()
                .unwrap(),
            "127.0.0.1"
        );
        assert!(whep.get("codec").is_none());
        let names: Vec<_> = EndpointSettings::param_specs(Kind::Whip)
            .iter()
            .map(|p| p.name().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "host-addr",
                "local-addresses",
                "stun-server",
                "token",
                "allowed-origins"
            ]
        );
    }

    #[test]
    fn origins_are_allowed_only_when_listed() {
        let none = Origins::parse("");
        assert_eq!(none.allow(Some("http://evil.example")), None);
        assert_eq!(none.allow(None), None);
        let list = Origins::parse("http://127.0.0.1:8765/, HTTP://localhost:8765");
        assert_eq!(
            list.allow(Some("http://localhost:8765")).unwrap(),
            "http://localhost:8765"
        );
        assert_eq!(
            list.allow(Some("http://127.0.0.1:8765")).unwrap(),
            "http://127.0.0.1:8765"
        );
        assert_eq!(list.allow(Some("http://127.0.0.1:8766")), None);
        assert_eq!(
            Origins::parse("http://a, *")
                .allow(Some("http://b"))
                .unwrap(),
            "*"
        );
    }

    #[test]
    fn bearer_tokens_are_read_and_compared_whole() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&h).as_deref(), Some("abc"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  abc "),
        );
        assert_eq!(bearer(&h).as_deref(), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
        assert!(!same_secret("", "a"));
    }
}
