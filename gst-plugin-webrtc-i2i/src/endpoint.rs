// SPDX-License-Identifier: MPL-2.0
//! The HTTP side of `i2iwhipsrc` and `i2iwhepsink`: one axum server per element in front of
//! the upstream signaller, which we drive through its `post` / `delete` action signals (the way
//! gst-plugins-rs documents for an external HTTP server).
//!
//! Why not the signaller's own warp server: it answers a malformed SDP with a bare 406, a DELETE
//! of an unknown resource with 200, has no CORS (so a page from another origin cannot publish),
//! and the WHEP one only listens once frames flow. Here:
//! - `POST /whip/endpoint` (or `/whep/endpoint`): Content-Type `application/sdp` (else 415),
//!   at most 64 KiB (else 413), an SDP that parses and starts with `v=0` (else 400), at least
//!   one video m-line (else 400) offering a codec we take (else 415), then 201 with the answer
//!   and `Location: /whip/resource/<id>`; a WHEP offer that comes before any frame reached
//!   the sink waits for it (10 s at most, then 503 with `Retry-After: 1`);
//! - `DELETE /whip/resource/<id>`: 200, or 404 for a resource that does not exist;
//! - `PATCH` (trickle ICE): 405, the offer must carry its candidates;
//! - `OPTIONS` and CORS headers on every answer, so browser pages of any origin can use it;
//! - every refusal is written in the response body and reported to the element (a rate-limited
//!   bus warning), the pipeline keeps running.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use gst::glib;
use gst::prelude::*;

/// Largest SDP offer taken: real offers are a few KiB.
pub const MAX_OFFER_BYTES: usize = 64 * 1024;

/// Which side: the paths and the codecs we take.
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
}

pub const DEFAULT_LOCAL_ADDRESSES: &str = "127.0.0.1";

/// The endpoint properties `i2iwhipsrc` and `i2iwhepsink` share (`host-addr`,
/// `local-addresses`, `stun-server`), defined once: their ParamSpecs, their values, and how
/// they are set on the wrapped WebRTC element.
#[derive(Debug, Clone)]
pub struct EndpointSettings {
    kind: Kind,
    pub host_addr: String,
    pub local_addresses: String,
    pub stun_server: Option<String>,
}

impl EndpointSettings {
    pub fn new(kind: Kind) -> Self {
        EndpointSettings {
            kind,
            host_addr: kind.default_host_addr().into(),
            local_addresses: DEFAULT_LOCAL_ADDRESSES.into(),
            stun_server: None,
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
        ]
    }

    /// Sets property `name`; false when it is not one of these.
    pub fn set(&mut self, name: &str, value: &glib::Value) -> bool {
        let text = || value.get::<Option<String>>().unwrap_or_default();
        match name {
            "host-addr" => {
                self.host_addr = text().unwrap_or_else(|| self.kind.default_host_addr().into())
            }
            "local-addresses" => self.local_addresses = text().unwrap_or_default(),
            "stun-server" => self.stun_server = text().filter(|s| !s.is_empty()),
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
}

/// Video codecs the pipeline can decode (WHIP) or encode (WHEP) with the packages set-up installs.
pub const CODECS: &[&str] = &["H264", "VP8", "VP9"];

/// What an endpoint takes: the codecs (a subset of [`CODECS`]) and, when it is narrower than
/// the element can do, the property that widens it (named in the refusal).
#[derive(Debug, Clone, Copy)]
pub struct Accepts {
    pub codecs: &'static [&'static str],
    pub hint: Option<&'static str>,
    /// WHEP with one H264 encoder for all viewers: its stream has one level, so an H264
    /// offer that names a lower level without `level-asymmetry-allowed` is taken as allowing
    /// it (see [`allow_h264_level_asymmetry`]).
    pub any_h264_level: bool,
}

impl Accepts {
    pub const ALL: Accepts = Accepts {
        codecs: CODECS,
        hint: None,
        any_h264_level: false,
    };
}

/// What the element is told about its endpoint.
pub trait Events: Send + Sync + 'static {
    /// A request was refused: `what` says what, for the bus (rate-limited by the element).
    fn refused(&self, what: &str);
    /// Whether a new session may start now (WHIP's busy policy); `Err` is the refusal text.
    /// `live` holds the ids of the sessions in progress.
    fn admit(&self, live: &BTreeSet<String>) -> Result<Vec<String>, String>;
    /// A session started (201 sent) or ended (DELETE, replacement, timeout).
    fn session(&self, id: &str, started: bool);
}

pub struct Endpoint {
    kind: Kind,
    /// The WebRTC element (`whipserversrc` / `whepserversink`); its `signaller` property is
    /// read at each use (a plain `glib::Object` cannot be kept across threads).
    element: gst::Element,
    events: Arc<dyn Events>,
    live: Mutex<BTreeSet<String>>,
    timeout: Duration,
    accepts: Accepts,
    /// WHEP: true once the WebRTC sink has probed its codecs on the first frames and started
    /// its signaller. An offer handed over earlier starts a session that is renegotiated
    /// as soon as the probe ends, which a WHEP viewer cannot follow (its ICE fails), so
    /// offers wait for this (at most `READY_WAIT`, then 503 with Retry-After).
    ready: Option<tokio::sync::watch::Receiver<bool>>,
}

/// How long a WHEP offer waits for the first frames before it is answered 503.
pub const READY_WAIT: Duration = Duration::from_secs(10);

/// Bus warnings for refused requests, at most one a second; the others are counted and the
/// count is given with the next warning.
#[derive(Default)]
pub struct RateLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    /// `Some(text to append)` when a warning may go out now, `None` when it is counted instead.
    pub fn allow(&mut self) -> Option<String> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(match std::mem::take(&mut self.suppressed) {
            0 => String::new(),
            n => format!(" ({n} more refused in the last second)"),
        })
    }
}

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

/// Checks an SDP offer; `Err((status, text))` says what is wrong with it.
pub fn check_offer(kind: Kind, accepts: Accepts, body: &[u8]) -> Result<(), (StatusCode, String)> {
    let who = kind.name();
    if body.len() > MAX_OFFER_BYTES {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{who} offer of {} bytes is over the {MAX_OFFER_BYTES} byte limit",
                body.len()
            ),
        ));
    }
    let text = std::str::from_utf8(body).map_err(|_| {
        (
            StatusCode::BAD_REQUEST,
            format!("{who} offer is not UTF-8 text: not an SDP"),
        )
    })?;
    if !text.trim_start().starts_with("v=0") {
        return Err((
            StatusCode::BAD_REQUEST,
            format!(
                "malformed SDP offer: it must start with the line v=0 (RFC 8866), found {:?}",
                text.chars().take(40).collect::<String>()
            ),
        ));
    }
    let sdp = gst_sdp::SDPMessage::parse_buffer(body)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("malformed SDP offer: {e}")))?;
    let mut offered = Vec::new();
    let mut videos = 0;
    for media in sdp.medias() {
        if media.media() != Some("video") {
            continue;
        }
        videos += 1;
        for attr in media.attributes() {
            if attr.key() == "rtpmap"
                && let Some(codec) = attr
                    .value()
                    .and_then(|v| v.split_whitespace().nth(1))
                    .and_then(|enc| enc.split('/').next())
            {
                offered.push(codec.to_ascii_uppercase());
            }
        }
    }
    if videos == 0 {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("{who} offer has no video m-line: send a video track"),
        ));
    }
    if !offered.iter().any(|c| accepts.codecs.contains(&c.as_str())) {
        offered.sort();
        offered.dedup();
        let supported = accepts.codecs;
        let hint = accepts.hint.map(|h| format!("; {h}")).unwrap_or_default();
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "{who} offer has no video codec we take: offered {offered:?}, supported {supported:?}{hint}"
            ),
        ));
    }
    Ok(())
}

/// Adds `level-asymmetry-allowed=1` to each H264 format of the offer's video m-lines that
/// lacks it; `None` when there is none to change (or the offer does not parse).
///
/// Browsers offer H264 with `level-asymmetry-allowed=1`, so the WebRTC sink drops the
/// offered `profile-level-id` and payloads the shared encoder's stream as it is. GStreamer's
/// `whepclientsrc` (gst-plugins-rs 0.15) offers `profile-level-id=42e016` (constrained
/// baseline, level 2.2, fixed in its code) without it: the sink then finds no H264 format
/// that matches the stream (level 3 at 512 x 512, 30 fps) and answers the video `inactive`,
/// so that viewer gets no picture. Its decoder takes any level, as browsers' do.
pub fn allow_h264_level_asymmetry(body: &[u8]) -> Option<Vec<u8>> {
    let mut sdp = gst_sdp::SDPMessage::parse_buffer(body).ok()?;
    let mut changed = false;
    for media in sdp.medias_mut() {
        if media.media() != Some("video") {
            continue;
        }
        // The payload types of H264.
        let h264: Vec<String> = media
            .attributes()
            .filter(|a| a.key() == "rtpmap")
            .filter_map(|a| {
                let (pt, enc) = a.value()?.split_once(' ')?;
                enc.to_ascii_uppercase()
                    .starts_with("H264/")
                    .then(|| pt.trim().to_string())
            })
            .collect();
        for pt in h264 {
            // `a=fmtp:<pt> <parameters>`, the parameters separated by `;`.
            let fmtp = (0..media.attributes_len()).find(|&i| {
                media.attribute(i).is_some_and(|a| {
                    a.key() == "fmtp"
                        && a.value()
                            .and_then(|v| v.split_whitespace().next())
                            .is_some_and(|p| p == pt)
                })
            });
            match fmtp {
                Some(i) => {
                    let value = media.attribute(i).and_then(|a| a.value()).unwrap_or("");
                    let params = value.trim()[pt.len()..].trim();
                    if params.contains("level-asymmetry-allowed") {
                        continue;
                    }
                    let value = if params.is_empty() {
                        format!("{pt} level-asymmetry-allowed=1")
                    } else {
                        format!("{pt} {params};level-asymmetry-allowed=1")
                    };
                    let attr = gst_sdp::SDPAttribute::new("fmtp", Some(&value));
                    media.replace_attribute(i, attr).ok()?;
                }
                None => {
                    media.add_attribute("fmtp", Some(&format!("{pt} level-asymmetry-allowed=1")));
                }
            }
            changed = true;
        }
    }
    if !changed {
        return None;
    }
    sdp.as_text().ok().map(String::into_bytes)
}

impl Endpoint {
    pub fn new(
        kind: Kind,
        element: gst::Element,
        events: Arc<dyn Events>,
        timeout: Duration,
        accepts: Accepts,
        ready: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Arc<Self> {
        Arc::new(Endpoint {
            kind,
            element,
            events,
            live: Mutex::new(BTreeSet::new()),
            timeout,
            accepts,
            ready,
        })
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

    fn signaller(&self) -> glib::Object {
        self.element.property::<glib::Object>("signaller")
    }

    pub fn live(&self) -> BTreeSet<String> {
        self.live.lock().unwrap().clone()
    }

    /// Ends session `id` (replaced, timed out, DELETE); false when there is no such session.
    pub async fn end(&self, id: &str) -> bool {
        if !self.live.lock().unwrap().remove(id) {
            return false;
        }
        let (promise, future) = gst::Promise::new_future();
        self.signaller()
            .emit_by_name::<()>("delete", &[&id.to_string(), &promise]);
        let _ = tokio::time::timeout(Duration::from_secs(5), future).await;
        self.events.session(id, false);
        true
    }

    fn refuse(&self, status: StatusCode, text: String) -> Response {
        self.events
            .refused(&format!("{} endpoint: {status}: {text}", self.kind.name()));
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            text + "\n",
        )
            .into_response()
    }

    async fn post(self: Arc<Self>, headers: HeaderMap, body: Bytes) -> Response {
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
        if let Err((status, text)) = check_offer(self.kind, self.accepts, &body) {
            return self.refuse(status, text);
        }
        if !self.wait_ready().await {
            let mut response = self.refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "no video has reached the {} endpoint yet (it answers once frames flow): retry",
                    self.kind.name()
                ),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
        let replaced = match self.events.admit(&self.live()) {
            Ok(replaced) => replaced,
            Err(text) => return self.refuse(StatusCode::CONFLICT, text),
        };
        for id in replaced {
            self.end(&id).await;
        }
        let offer = match self.kind {
            Kind::Whep if self.accepts.any_h264_level => {
                allow_h264_level_asymmetry(&body).unwrap_or_else(|| body.to_vec())
            }
            _ => body.to_vec(),
        };
        let (promise, future) = gst::Promise::new_future();
        self.signaller().emit_by_name::<()>(
            "post",
            &[&None::<String>, &glib::Bytes::from_owned(offer), &promise],
        );
        let reply = match tokio::time::timeout(self.timeout + Duration::from_secs(5), future).await
        {
            Ok(Ok(Some(reply))) => reply,
            Ok(_) => {
                return self.refuse(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the WebRTC element gave no answer (is the pipeline running?)".into(),
                );
            }
            Err(_) => {
                return self.refuse(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("no SDP answer within {} s", self.timeout.as_secs() + 5),
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
        let mut response = Response::builder().status(status);
        let mut id = None;
        if let Ok(h) = reply.get::<gst::Structure>("headers") {
            for (name, value) in h.iter() {
                let Ok(value) = value.get::<String>() else {
                    continue;
                };
                if name.eq_ignore_ascii_case("location") {
                    id = value.rsplit('/').next().map(str::to_owned);
                }
                response = response.header(name.as_str(), value);
            }
        }
        if let Some(id) = &id {
            self.live.lock().unwrap().insert(id.clone());
            self.events.session(id, true);
        }
        response
            .body(Body::from(body))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    }

    async fn delete(self: Arc<Self>, id: String) -> Response {
        if self.end(&id).await {
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
}

async fn cors(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let preflight = request.method() == Method::OPTIONS;
    let mut response = if preflight {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(request).await
    };
    let h = response.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
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
    if preflight {
        h.insert("Accept-Post", HeaderValue::from_static("application/sdp"));
    }
    response
}

pub fn router(endpoint: Arc<Endpoint>) -> Router {
    let root = endpoint.kind.root();
    Router::new()
        .route(
            &format!("/{root}/endpoint"),
            post(|State(e): State<Arc<Endpoint>>, headers: HeaderMap, body: Bytes| e.post(headers, body)),
        )
        .route(
            &format!("/{root}/resource/{{id}}"),
            delete(|State(e): State<Arc<Endpoint>>, Path(id): Path<String>| e.delete(id)).patch(
                |State(e): State<Arc<Endpoint>>| async move {
                    e.refuse(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "trickle ICE is not supported: send the offer once ICE gathering is complete".into(),
                    )
                },
            ),
        )
        .layer(axum::extract::DefaultBodyLimit::max(MAX_OFFER_BYTES * 2))
        .layer(axum::middleware::from_fn(cors))
        .with_state(endpoint)
}

/// The running server: its own small tokio runtime, stopped with the element.
pub struct Server {
    runtime: tokio::runtime::Runtime,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub addr: SocketAddr,
}

impl Server {
    /// Binds `host_addr` (http://host:port) at once, so a taken port fails the state change.
    pub fn start(host_addr: &str, endpoint: Arc<Endpoint>) -> Result<Server, String> {
        let hostport = host_addr
            .strip_prefix("http://")
            .unwrap_or(host_addr)
            .trim_end_matches('/');
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("{}-http", endpoint.kind.root()))
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the HTTP runtime: {e}"))?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(hostport))
            .map_err(|e| {
                format!("cannot listen on {hostport}: {e}; pick a free port in host-addr")
            })?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("cannot read the bound address: {e}"))?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = router(endpoint);
        runtime.spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(Server {
            runtime,
            shutdown: Some(tx),
            addr,
        })
    }

    pub fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(&self, f: F) {
        self.runtime.spawn(f);
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

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:96 VP8/90000\r\n\
a=rtpmap:97 rtx/90000\r\na=sendonly\r\n";

    fn init() {
        let _ = gst::init();
    }

    #[test]
    fn a_video_offer_in_a_codec_we_take_passes() {
        init();
        assert!(check_offer(Kind::Whip, Accepts::ALL, OFFER.as_bytes()).is_ok());
    }

    #[test]
    fn garbage_is_a_malformed_sdp() {
        init();
        let (status, text) = check_offer(Kind::Whip, Accepts::ALL, b"hello world").unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(text.contains("malformed SDP"), "{text}");
    }

    #[test]
    fn audio_only_is_refused_for_want_of_video() {
        init();
        let audio = OFFER
            .replace("m=video", "m=audio")
            .replace("VP8/90000", "opus/48000/2");
        let (status, text) = check_offer(Kind::Whip, Accepts::ALL, audio.as_bytes()).unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(text.contains("no video"), "{text}");
    }

    #[test]
    fn an_unsupported_codec_is_named() {
        init();
        let av1 = OFFER.replace("VP8/90000", "AV1/90000");
        let (status, text) = check_offer(Kind::Whep, Accepts::ALL, av1.as_bytes()).unwrap_err();
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(text.contains("AV1") && text.contains("H264"), "{text}");
    }

    /// The video m-line of GStreamer's `whepclientsrc` (gst-plugins-rs 0.15), shortened.
    const GST_WHEP_OFFER: &str = "v=0\r\no=- 1 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97 98 99\r\nc=IN IP4 0.0.0.0\r\na=recvonly\r\n\
a=rtpmap:96 VP8/90000\r\na=rtpmap:97 H264/90000\r\na=rtcp-fb:97 nack pli\r\n\
a=fmtp:97 profile-level-id=42e016\r\na=rtpmap:98 h264/90000\r\na=rtpmap:99 H264/90000\r\n\
a=fmtp:99\r\na=mid:video0\r\n\
m=audio 0 UDP/TLS/RTP/SAVPF 101\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:101 H264/90000\r\n";

    fn fmtp_lines(sdp: &str) -> Vec<&str> {
        sdp.lines().filter(|l| l.starts_with("a=fmtp:")).collect()
    }

    #[test]
    fn h264_offers_without_level_asymmetry_are_given_it() {
        init();
        let out = allow_h264_level_asymmetry(GST_WHEP_OFFER.as_bytes()).expect("changed");
        let out = String::from_utf8(out).unwrap();
        let fmtp = fmtp_lines(&out);
        // The H264 payloads of the video m-line (one had no fmtp, one an empty one), nothing
        // for VP8 or audio.
        assert_eq!(
            fmtp,
            [
                "a=fmtp:97 profile-level-id=42e016;level-asymmetry-allowed=1",
                "a=fmtp:99 level-asymmetry-allowed=1",
                "a=fmtp:98 level-asymmetry-allowed=1"
            ],
            "{out}"
        );
        assert!(out.contains("a=rtpmap:96 VP8/90000") && out.contains("a=mid:video0"));
        // It still passes the codec check and parses.
        assert!(check_offer(Kind::Whep, Accepts::ALL, out.as_bytes()).is_ok());
        // Offers that have it (browsers), or no H264, pass unchanged.
        assert!(allow_h264_level_asymmetry(out.as_bytes()).is_none());
        assert!(allow_h264_level_asymmetry(OFFER.as_bytes()).is_none());
        assert!(allow_h264_level_asymmetry(b"not an sdp").is_none());
    }

    #[test]
    fn a_narrower_endpoint_names_the_property_that_widens_it() {
        init();
        let h264_only = Accepts {
            codecs: &["H264"],
            hint: Some("set codec=vp8"),
            any_h264_level: true,
        };
        let (status, text) = check_offer(Kind::Whep, h264_only, OFFER.as_bytes()).unwrap_err();
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(
            text.contains("VP8") && text.contains("[\"H264\"]") && text.contains("codec=vp8"),
            "{text}"
        );
        let h264 = OFFER.replace("VP8/90000", "H264/90000");
        assert!(check_offer(Kind::Whep, h264_only, h264.as_bytes()).is_ok());
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
        assert!(!whep.set("ts-offset", &0u64.to_value()));
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
        assert_eq!(names, ["host-addr", "local-addresses", "stun-server"]);
    }

    #[test]
    fn refusals_are_rate_limited_and_counted() {
        let mut r = RateLimit::default();
        assert_eq!(r.allow().as_deref(), Some(""));
        assert!(r.allow().is_none());
        assert!(r.allow().is_none());
        r.last = Some(Instant::now() - Duration::from_secs(2));
        assert_eq!(
            r.allow().as_deref(),
            Some(" (2 more refused in the last second)")
        );
    }

    #[test]
    fn a_huge_offer_is_refused() {
        init();
        let big = format!("{OFFER}{}", "a=x\r\n".repeat(MAX_OFFER_BYTES / 4));
        assert_eq!(
            check_offer(Kind::Whip, Accepts::ALL, big.as_bytes())
                .unwrap_err()
                .0,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
