// SPDX-License-Identifier: MPL-2.0
//! The HTTP side: the page, the WebSocket endpoint (seed 001's relay protocol, the page's
//! frames and controls, output frames), MJPEG, and the access checks in front of them
//! (token, Host, Origin).
//!
//! Each WebSocket client has a writer task fed by its own bounded queue: relayed messages
//! that do not fit are dropped for that client alone (counted), and output frames come from
//! a `watch` channel that keeps only the newest, so a slow viewer skips frames without
//! slowing the pipeline, the producers or the other viewers.
//!
//! What one client may cost: messages up to `--max-message-size` (tungstenite refuses a
//! longer one from its header, before buffering it), a write buffer with room for one
//! message we send and no more (the pongs tungstenite queues for a client that pings and
//! never reads stop there), `--max-rate` messages a second (pings included),
//! `--max-pixel-rate` image pixels a second (checked from the header, before a PNG is
//! decoded), a message that must arrive whole within `--message-timeout`, and
//! `--idle-timeout` without any message or pong (the server pings every third of it).
//! Protocol errors close the connection with their own close code and the reason.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::args::Options;
use crate::bridge::{OutFrame, Outgoing};
use crate::control::{self, Control, Outcome, Reply};
use crate::hosts::Hosts;
use crate::input::{self, ImageLimits, Incoming, Refusal};
use crate::limits::{Limits, Meter};
use crate::stats::Stats;

const PAGE_HTML: &str = include_str!("page/index.html");
const PAGE_JS: &str = include_str!("page/app.js");
const PAGE_CSS: &str = include_str!("page/style.css");

/// Messages waiting for one client's writer (acks, relays, answers); relays beyond it
/// are dropped for that client.
const CLIENT_QUEUE: usize = 8;
/// Error messages sent to one client per second; the rest are only counted.
const ERRORS_PER_SECOND: u32 = 5;
/// How often output viewers get their counters.
const STATS_EVERY: Duration = Duration::from_secs(1);
/// tungstenite's write buffer: what is gathered before a write to the socket.
const WRITE_BUFFER: usize = 128 * 1024;
/// Close reasons are at most 123 bytes (RFC 6455).
const MAX_CLOSE_REASON: usize = 123;

pub struct App {
    pub opts: Options,
    pub stats: Arc<Stats>,
    pub publish: mpsc::SyncSender<Outgoing>,
    pub output: watch::Receiver<Option<Arc<OutFrame>>>,
    pub control: Option<Arc<Control>>,
    pub limits: Arc<Limits>,
    hosts: Hosts,
    /// Clients that receive relayed seed-001 image messages.
    relay_targets: Mutex<HashMap<u64, tokio::sync::mpsc::Sender<Message>>>,
    /// Output viewers (WebSocket and MJPEG): the sequence number of the last frame each
    /// was sent, so the frames a stuck viewer is missing are counted while it is stuck.
    viewers: Mutex<HashMap<u64, Arc<AtomicU64>>>,
    next_client: AtomicU64,
}

impl App {
    pub fn new(
        opts: Options,
        stats: Arc<Stats>,
        publish: mpsc::SyncSender<Outgoing>,
        output: watch::Receiver<Option<Arc<OutFrame>>>,
        control: Option<Arc<Control>>,
        limits: Arc<Limits>,
        listen: std::net::IpAddr,
    ) -> App {
        let hosts = Hosts::new(&opts.allowed_hosts, listen);
        App {
            opts,
            stats,
            publish,
            output,
            control,
            limits,
            hosts,
            relay_targets: Mutex::new(HashMap::new()),
            viewers: Mutex::new(HashMap::new()),
            next_client: AtomicU64::new(1),
        }
    }
}

impl App {
    fn latest_seq(&self) -> u64 {
        self.output.borrow().as_ref().map_or(0, |f| f.seq)
    }

    /// The counters, with `dropped-viewer` including the frames that viewers which are
    /// behind right now will never get (everything between their last frame and the newest).
    pub fn stats_json(&self) -> Value {
        let latest = self.latest_seq();
        let behind: u64 = self
            .viewers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|last| behind(latest, last))
            .sum();
        let mut v = self.stats.to_json();
        v["dropped-viewer"] = (self.stats.dropped_viewer.load(Ordering::Relaxed) + behind).into();
        v
    }

    fn image_limits(&self) -> ImageLimits {
        ImageLimits {
            max_bytes: self.opts.max_image_bytes,
            max_pixels: self.opts.max_pixels,
        }
    }

    fn add_viewer(&self) -> (u64, Arc<AtomicU64>) {
        let id = self.next_client.fetch_add(1, Ordering::Relaxed);
        let last = Arc::new(AtomicU64::new(0));
        self.viewers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, last.clone());
        (id, last)
    }

    /// Forgets a viewer; the frames it was behind by stay counted.
    fn remove_viewer(&self, id: u64) {
        let last = self
            .viewers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if let Some(last) = last {
            let gap = behind(self.latest_seq(), &last);
            self.stats.add(&self.stats.dropped_viewer, gap);
        }
    }

    /// Records that a viewer is sent frame `seq`; returns the frames it skipped.
    fn viewer_sent(&self, last: &AtomicU64, seq: u64) -> u64 {
        let prev = last.swap(seq, Ordering::Relaxed);
        let gap = if prev == 0 {
            0
        } else {
            seq.saturating_sub(prev + 1)
        };
        self.stats.add(&self.stats.dropped_viewer, gap);
        gap
    }
}

/// The largest output frame (JPEG bytes): its seed-001 JSON form (base64 and the fields
/// around it) still fits one message of --max-message-size.
pub fn max_output_frame(opts: &Options) -> usize {
    (opts.max_message_size().saturating_sub(1024)) / 4 * 3
}

/// Frames between a viewer's last one and the newest (none before its first).
fn behind(latest: u64, last: &AtomicU64) -> u64 {
    match last.load(Ordering::Relaxed) {
        0 => 0,
        last => latest.saturating_sub(last + 1),
    }
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/ws", get(ws_only))
        .route(
            "/app.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    PAGE_JS,
                )
            }),
        )
        .route(
            "/style.css",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
                    PAGE_CSS,
                )
            }),
        )
        .route("/stream.mjpg", get(mjpeg))
        .route("/frame.jpg", get(latest_frame))
        .route("/api/stats", get(api_stats))
        .with_state(app)
}

type Params = Query<HashMap<String, String>>;

/// The token, Host and origin checks. Without a token, the `Host` must name this machine
/// (or a name given with --allowed-host): a page that rebinds its own name to this machine's
/// address sends that name, and the same in its Origin. A browser always sends `Origin` on
/// a WebSocket upgrade: only pages served by this program (same host and port) or listed
/// with --allow-origin may connect. Programs (seed-001 clients, i2i-stats) send no Origin.
fn check_access(
    app: &App,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Result<(), (StatusCode, String)> {
    if let Some(token) = &app.opts.token {
        let given = params.get("token").map(String::as_str).or_else(|| {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        });
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
            app.stats.add(&app.stats.refused_token, 1);
            return Err((
                StatusCode::UNAUTHORIZED,
                "i2i-web: this server needs its access token: open /?token=TOKEN (the --token given to i2i-web)\n"
                    .to_string(),
            ));
        }
    }
    if app.opts.token.is_none()
        && let Some(host) = headers.get(header::HOST)
    {
        let host = host.to_str().unwrap_or("");
        if !app.hosts.accepts(host) {
            app.stats.add(&app.stats.refused_host, 1);
            let name =
                crate::hosts::host_of(host).unwrap_or_else(|| host.chars().take(80).collect());
            return Err((
                StatusCode::FORBIDDEN,
                format!(
                    "i2i-web: requests for host '{name}' are refused: it is not this machine's name or address \
                     (start i2i-web with --allowed-host {name} if it is meant, or with --token)\n"
                ),
            ));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("").trim_end_matches('/');
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let same = !host.is_empty()
            && (origin == format!("http://{host}") || origin == format!("https://{host}"));
        if !same && !app.opts.allow_origins.iter().any(|o| o == origin) {
            app.stats.add(&app.stats.refused_origin, 1);
            return Err((
                StatusCode::FORBIDDEN,
                format!(
                    "i2i-web: pages from origin '{origin}' may not connect (start i2i-web with --allow-origin {origin} to allow it)\n"
                ),
            ));
        }
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn root(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    headers: HeaderMap,
    Query(params): Params,
) -> Response {
    if let Err(r) = check_access(&app, &headers, &params) {
        return r.into_response();
    }
    match ws {
        Ok(ws) => upgrade(app, ws, &params, peer),
        Err(_) if headers.contains_key(header::UPGRADE) => (
            StatusCode::BAD_REQUEST,
            "i2i-web: malformed WebSocket upgrade\n",
        )
            .into_response(),
        Err(_) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            PAGE_HTML,
        )
            .into_response(),
    }
}

async fn ws_only(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    headers: HeaderMap,
    Query(params): Params,
) -> Response {
    if let Err(r) = check_access(&app, &headers, &params) {
        return r.into_response();
    }
    match ws {
        Ok(ws) => upgrade(app, ws, &params, peer),
        Err(e) => e.into_response(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum OutputMode {
    None,
    Binary,
    Json,
}

fn upgrade(
    app: Arc<App>,
    ws: WebSocketUpgrade,
    params: &HashMap<String, String>,
    peer: std::net::SocketAddr,
) -> Response {
    let output = match params.get("output").map(String::as_str) {
        None | Some("") | Some("none") => OutputMode::None,
        Some("binary") => OutputMode::Binary,
        Some("json") => OutputMode::Json,
        Some(other) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("i2i-web: output={other} is not known: use binary, json or none\n"),
            )
                .into_response();
        }
    };
    let relay = !matches!(
        params.get("relay").map(String::as_str),
        Some("0" | "false" | "no")
    );
    // A longer message closes the connection (1009) from its frame header, before it is
    // buffered. What we send is at most one such message (a relay, an output frame), so
    // the write buffer has room for one and no more: pongs for a client that pings and
    // never reads wait in tungstenite's single slot instead of piling up.
    let max = app.opts.max_message_size();
    let meter = app.limits.meter(&peer).unwrap_or_default();
    ws.max_message_size(max)
        .max_frame_size(max)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + max + 4096)
        .on_upgrade(move |socket| client(app, socket, output, relay, meter))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn text(v: Value) -> Message {
    Message::Text(Utf8Bytes::from(v.to_string()))
}

fn frame_message(f: &OutFrame, mode: OutputMode) -> Message {
    match mode {
        OutputMode::Json => text(json!({
            "type": "image",
            "format": "jpeg",
            "data": base64::engine::general_purpose::STANDARD.encode(&f.jpeg),
            "timestamp": f.timestamp_ms as f64 / 1000.0,
            "index": f.index,
        })),
        _ => Message::Binary(f.message.clone()),
    }
}

/// Allows `rate` units (messages, pixels) per second, with bursts of up to `burst`.
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: f64, burst: f64) -> TokenBucket {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    fn take(&mut self, n: f64) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

/// A close frame; the reason cut to what a close frame holds.
fn close_frame(code: u16, reason: &str) -> Message {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(&reason[..end]),
    }))
}

/// The close code and reason for an error read from a client; None when the connection is
/// gone (nothing can be sent on it).
fn close_for(e: axum::Error) -> Option<(u16, String)> {
    use tungstenite::error::{Error as WsError, ProtocolError};
    let Ok(e) = e.into_inner().downcast::<WsError>() else {
        return None;
    };
    match *e {
        WsError::Capacity(c) => Some((1009, format!("{c} bytes (--max-message-size)"))),
        WsError::Utf8(_) => Some((1007, "a text message is not valid UTF-8".into())),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        WsError::Protocol(p) => Some((1002, format!("protocol error: {p}"))),
        _ => None,
    }
}

/// Per-client budget of error messages.
struct ErrorBudget {
    second: Instant,
    sent: u32,
    count: u64,
}

impl ErrorBudget {
    /// Counts an error; true when it may also be sent.
    fn note(&mut self) -> bool {
        self.count += 1;
        if self.second.elapsed() >= Duration::from_secs(1) {
            self.second = Instant::now();
            self.sent = 0;
        }
        self.sent += 1;
        self.sent <= ERRORS_PER_SECOND
    }
}

async fn client(
    app: Arc<App>,
    socket: WebSocket,
    output: OutputMode,
    relay: bool,
    meter: Arc<Meter>,
) {
    let id = app.next_client.fetch_add(1, Ordering::Relaxed);
    let stats = app.stats.clone();
    stats.add(&stats.clients, 1);
    stats.add(&stats.connections, 1);
    let (sink, mut stream) = socket.split();
    let (tx, rx) = tokio::sync::mpsc::channel::<Message>(CLIENT_QUEUE);
    if relay {
        app.relay_targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx.clone());
    }
    let dropped = Arc::new(AtomicU64::new(0));
    // The reader's last word to the writer: a close frame to send, or None.
    let (close_tx, close_rx) = tokio::sync::oneshot::channel::<Option<(u16, String)>>();
    let writer = tokio::spawn(writer(
        app.clone(),
        sink,
        rx,
        close_rx,
        output,
        dropped.clone(),
    ));

    let opts = &app.opts;
    let mut bucket = TokenBucket::new(opts.max_rate as f64, opts.max_rate as f64);
    let pixel_rate = opts.max_pixel_rate as f64;
    let mut pixels = TokenBucket::new(pixel_rate, pixel_rate.max(opts.max_pixels as f64));
    let mut errors = ErrorBudget {
        second: Instant::now(),
        sent: 0,
        count: 0,
    };
    let mut flood_warned = Instant::now() - Duration::from_secs(10);
    let mut last_message = Instant::now();
    let mut read_mark = meter.read.load(Ordering::Relaxed);
    let mut check = tokio::time::interval(Duration::from_millis(250));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let close = loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            _ = check.tick() => {
                let since = last_message.elapsed();
                if since >= opts.message_timeout && meter.read.load(Ordering::Relaxed) > read_mark {
                    stats.add(&stats.closed_slow, 1);
                    break Some((1008, format!(
                        "a message took longer than {} ms to arrive (--message-timeout)",
                        opts.message_timeout.as_millis()
                    )));
                }
                if since >= opts.idle_timeout {
                    stats.add(&stats.closed_idle, 1);
                    break Some((1008, format!(
                        "no message or pong for {} ms (--idle-timeout)",
                        opts.idle_timeout.as_millis()
                    )));
                }
                continue;
            }
        };
        let msg = match msg {
            None => break None,
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                // Over the size limit, a protocol error, invalid UTF-8, or a broken connection.
                let close = close_for(e);
                if close.is_some() {
                    stats.add(&stats.rejected, 1);
                    stats.add(&stats.closed_protocol, 1);
                }
                break close;
            }
        };
        last_message = Instant::now();
        read_mark = meter.read.load(Ordering::Relaxed);
        if matches!(msg, Message::Close(_)) {
            break None;
        }
        if !bucket.take(1.0) {
            stats.add(&stats.dropped_flood, 1);
            dropped.fetch_add(1, Ordering::Relaxed);
            if flood_warned.elapsed() >= Duration::from_secs(1) {
                flood_warned = Instant::now();
                // Error messages are few (once a second here, 5 a second below):
                // waiting for room holds up this client alone.
                let _ = tx
                    .send(text(json!({
                        "type": "error",
                        "error": format!("too many messages: more than {} per second (pings included) are dropped (--max-rate)", opts.max_rate),
                        "dropped": dropped.load(Ordering::Relaxed),
                    })))
                    .await;
            }
            continue;
        }
        let result = match &msg {
            Message::Text(t) => input::parse_text(t.as_str(), &app.image_limits(), now_ms()),
            Message::Binary(b) => input::parse_binary(b, &app.image_limits(), now_ms()),
            // tungstenite answers pings itself; pongs answer ours.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => continue,
        };
        let result = match result {
            Ok(Incoming::Image {
                image,
                timestamp_ms,
                relay: relay_it,
            }) => {
                // Charged before anything is decoded (here or in the pipeline's jpegdec).
                if pixels.take(image.pixels() as f64) {
                    accept_image(&app, &tx, id, &msg, image, timestamp_ms, relay_it).await
                } else {
                    stats.add(&stats.dropped_pixel_rate, 1);
                    Err(format!(
                        "image: {} x {} dropped: this client sent more than {} pixels a second (--max-pixel-rate)",
                        image.width, image.height, opts.max_pixel_rate
                    ))
                }
            }
            Ok(Incoming::Register { client_type }) => {
                // Seed 001's producers read one answer per image (its ack): relayed
                // images would be read in its place, so a producer gets none.
                if client_type == "producer" {
                    app.relay_targets
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                } else if relay {
                    app.relay_targets
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(id, tx.clone());
                }
                let reply = json!({"type": "registered", "client_type": client_type, "timestamp": now_ms() as f64 / 1000.0});
                send(&tx, text(reply)).await
            }
            Ok(Incoming::Ping) => {
                let reply = json!({"type": "pong", "timestamp": now_ms() as f64 / 1000.0});
                send(&tx, text(reply)).await
            }
            Ok(Incoming::Control { id: req, command }) => {
                send(&tx, control(&app, req, command.into_bytes()).await).await
            }
            Ok(Incoming::Settings { id: req, settings }) => {
                send(
                    &tx,
                    control(&app, req, settings.to_string().into_bytes()).await,
                )
                .await
            }
            Err(Refusal::Oversize(e)) => {
                stats.add(&stats.dropped_oversize, 1);
                Err(e)
            }
            Err(Refusal::Bad(e)) => Err(e),
        };
        match result {
            Ok(true) => {}
            Ok(false) => break None,
            Err(e) => {
                stats.add(&stats.rejected, 1);
                if errors.note() {
                    let _ = tx
                        .send(text(
                            json!({"type": "error", "error": e, "rejected": errors.count}),
                        ))
                        .await;
                }
            }
        }
    };
    app.relay_targets
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
    let _ = close_tx.send(close);
    drop(tx);
    let _ = writer.await;
    stats.sub(&stats.clients, 1);
}

/// Queues a message for the client's writer; false once the writer is gone.
async fn send(tx: &tokio::sync::mpsc::Sender<Message>, msg: Message) -> Result<bool, String> {
    Ok(tx.send(msg).await.is_ok())
}

/// Publishes a checked image (a PNG converted on a blocking thread, so other clients are
/// served meanwhile), relays a seed-001 message as it came and acknowledges it.
async fn accept_image(
    app: &Arc<App>,
    tx: &tokio::sync::mpsc::Sender<Message>,
    id: u64,
    msg: &Message,
    image: input::Image,
    timestamp_ms: i64,
    relay: bool,
) -> Result<bool, String> {
    let stats = &app.stats;
    let jpeg = tokio::task::spawn_blocking(move || image.into_jpeg())
        .await
        .map_err(|e| format!("image: conversion failed: {e}"))??;
    stats.add(&stats.images_received, 1);
    if app
        .publish
        .try_send(Outgoing { timestamp_ms, jpeg })
        .is_err()
    {
        stats.add(&stats.dropped_publish, 1);
    }
    if !relay {
        return Ok(true);
    }
    if let Message::Text(t) = msg {
        relay_to_others(app, id, t);
    }
    stats.add(&stats.acks, 1);
    send(tx, text(json!({"type": "ack", "status": "received"}))).await
}

/// Sends one client its messages, output frames, counters and pings; ends with the close
/// frame the reader asks for.
async fn writer(
    app: Arc<App>,
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut rx: tokio::sync::mpsc::Receiver<Message>,
    mut close_rx: tokio::sync::oneshot::Receiver<Option<(u16, String)>>,
    output: OutputMode,
    dropped: Arc<AtomicU64>,
) {
    let mut frames = app.output.clone();
    frames.mark_changed();
    let viewer = output != OutputMode::None;
    let viewer_id = viewer.then(|| app.add_viewer());
    let mut tick = tokio::time::interval(STATS_EVERY);
    // Pings keep a quiet client (a viewer, a consumer waiting for relays) from counting
    // as idle as long as it answers; one that does not is closed after --idle-timeout.
    let mut ping = tokio::time::interval(app.opts.idle_timeout / 3);
    ping.reset();
    let close = loop {
        let msg = tokio::select! {
            biased;
            close = &mut close_rx => break close.ok().flatten(),
            m = rx.recv() => match m {
                Some(m) => m,
                None => break None,
            },
            changed = frames.changed(), if viewer => {
                if changed.is_err() {
                    break None;
                }
                let Some(f) = frames.borrow_and_update().clone() else { continue };
                if let Some((_, last)) = &viewer_id {
                    dropped.fetch_add(app.viewer_sent(last, f.seq), Ordering::Relaxed);
                }
                frame_message(&f, output)
            }
            _ = tick.tick(), if viewer => text(json!({
                "type": "stats",
                "dropped": dropped.load(Ordering::Relaxed),
                "server": app.stats_json(),
            })),
            _ = ping.tick() => Message::Ping(Bytes::from_static(b"i2i-web")),
        };
        let sent = tokio::select! {
            biased;
            close = &mut close_rx => break close.ok().flatten(),
            r = sink.send(msg) => r,
        };
        if sent.is_err() {
            break None;
        }
    };
    match close {
        // A peer that takes nothing is cut off by --write-timeout below this.
        Some((code, reason)) => {
            let _ = sink.send(close_frame(code, &reason)).await;
        }
        // The peer closed (tungstenite's answer to its close frame goes out with this), or
        // the connection is gone (this fails at once).
        None => {
            let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
        }
    }
    if let Some((id, _)) = viewer_id {
        app.remove_viewer(id);
    }
}

fn relay_to_others(app: &App, from: u64, message: &Utf8Bytes) {
    let targets = app.relay_targets.lock().unwrap_or_else(|p| p.into_inner());
    for (id, target) in targets.iter() {
        if *id == from {
            continue;
        }
        match target.try_send(Message::Text(message.clone())) {
            Ok(()) => app.stats.add(&app.stats.relayed, 1),
            Err(_) => app.stats.add(&app.stats.dropped_relay, 1),
        }
    }
}

/// Passes one control to the holder and makes the client's answer: the holder's words, a
/// local refusal, or at once "not sent" when the holder does not answer.
async fn control(app: &Arc<App>, req: Value, payload: Vec<u8>) -> Message {
    let stats = &app.stats;
    stats.add(&stats.controls, 1);
    let answer = match &app.control {
        None => Err("no settings holder: i2i-web was started with --control none".to_string()),
        Some(c) => match c.submit(payload) {
            Outcome::Local(a) => Ok(a),
            Outcome::Refused(e) => Err(e),
            Outcome::NotSent(e) => {
                stats.add(&stats.controls_not_sent, 1);
                Err(e)
            }
            Outcome::Queued(reply) => {
                match tokio::time::timeout(control::TIMEOUT + Duration::from_secs(2), reply).await {
                    Ok(Ok(Reply::Answer(a))) => a,
                    Ok(Ok(Reply::NotSent(e))) => {
                        stats.add(&stats.controls_not_sent, 1);
                        Err(e)
                    }
                    _ => Err("the control thread did not answer".to_string()),
                }
            }
        },
    };
    match answer {
        Ok(a) => text(json!({"type": "control", "id": req, "ok": true, "answer": a})),
        Err(e) => {
            stats.add(&stats.control_errors, 1);
            text(json!({"type": "control", "id": req, "ok": false, "error": e}))
        }
    }
}

async fn mjpeg(State(app): State<Arc<App>>, headers: HeaderMap, Query(params): Params) -> Response {
    if let Err(r) = check_access(&app, &headers, &params) {
        return r.into_response();
    }
    struct Viewer {
        app: Arc<App>,
        id: u64,
        last: Arc<AtomicU64>,
    }
    impl Drop for Viewer {
        fn drop(&mut self) {
            self.app.stats.sub(&self.app.stats.mjpeg_viewers, 1);
            self.app.remove_viewer(self.id);
        }
    }
    app.stats.add(&app.stats.mjpeg_viewers, 1);
    let (id, last) = app.add_viewer();
    let viewer = Viewer {
        app: app.clone(),
        id,
        last,
    };
    let mut frames = app.output.clone();
    frames.mark_changed();
    let parts = futures_util::stream::unfold((frames, viewer), |(mut frames, viewer)| async move {
        loop {
            frames.changed().await.ok()?;
            let Some(f) = frames.borrow_and_update().clone() else {
                continue;
            };
            viewer.app.viewer_sent(&viewer.last, f.seq);
            let mut part = format!(
                "--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
                f.jpeg.len()
            )
            .into_bytes();
            part.extend_from_slice(&f.jpeg);
            part.extend_from_slice(b"\r\n");
            return Some((Ok::<_, Infallible>(Bytes::from(part)), (frames, viewer)));
        }
    });
    (
        [
            (
                header::CONTENT_TYPE,
                "multipart/x-mixed-replace; boundary=frame",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(parts),
    )
        .into_response()
}

async fn latest_frame(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(params): Params,
) -> Response {
    if let Err(r) = check_access(&app, &headers, &params) {
        return r.into_response();
    }
    let frame = app.output.borrow().clone();
    match frame {
        Some(f) => (
            [
                (header::CONTENT_TYPE, "image/jpeg"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            f.jpeg.clone(),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "i2i-web: no frame from the pipeline yet (subscribed to {})\n",
                app.opts.subscribe
            ),
        )
            .into_response(),
    }
}

async fn api_stats(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(params): Params,
) -> Response {
    if let Err(r) = check_access(&app, &headers, &params) {
        return r.into_response();
    }
    let mut v = app.stats_json();
    v["control"] = app
        .control
        .as_ref()
        .map(|c| Value::from(c.endpoint()))
        .unwrap_or(Value::Null);
    v["subscribe"] = app.opts.subscribe.clone().into();
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_TYPE, "application/json"),
        ],
        v.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_allows_a_burst_then_the_rate() {
        let mut b = TokenBucket::new(10.0, 10.0);
        assert_eq!((0..30).filter(|_| b.take(1.0)).count(), 10);
        b.last -= Duration::from_millis(500);
        assert_eq!((0..30).filter(|_| b.take(1.0)).count(), 5);
        // Pixels: a budget of 1000 a second, one image of 800 at a time.
        let mut p = TokenBucket::new(1000.0, 1000.0);
        assert!(p.take(800.0));
        assert!(!p.take(800.0));
        p.last -= Duration::from_millis(700);
        assert!(p.take(800.0));
    }

    #[test]
    fn close_reasons_fit_a_close_frame() {
        let Message::Close(Some(f)) = close_frame(1008, &"é".repeat(100)) else {
            panic!()
        };
        assert_eq!(f.code, 1008);
        assert!(f.reason.as_str().len() <= MAX_CLOSE_REASON);
        assert!(f.reason.as_str().starts_with('é'));
    }

    #[test]
    fn error_budget_sends_five_a_second_and_counts_all() {
        let mut e = ErrorBudget {
            second: Instant::now(),
            sent: 0,
            count: 0,
        };
        assert_eq!(
            (0..20).filter(|_| e.note()).count(),
            ERRORS_PER_SECOND as usize
        );
        assert_eq!(e.count, 20);
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3creT"));
        assert!(!constant_time_eq(b"s3cret", b"s3cre"));
    }
}
