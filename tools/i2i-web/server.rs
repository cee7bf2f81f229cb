// SPDX-License-Identifier: MPL-2.0
//! The HTTP side: the page, the WebSocket endpoint (seed 001's relay protocol, the page's
//! frames and controls, output frames), MJPEG, and the access checks in front of them.
//!
//! Each WebSocket client has a writer task fed by its own bounded queue: relayed messages
//! that do not fit are dropped for that client alone (counted), and output frames come from
//! a `watch` channel that keeps only the newest, so a slow viewer skips frames without
//! slowing the pipeline, the producers or the other viewers.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::args::Options;
use crate::bridge::{OutFrame, Outgoing};
use crate::control::Control;
use crate::input::{self, Incoming};
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

pub struct App {
    pub opts: Options,
    pub stats: Arc<Stats>,
    pub publish: mpsc::SyncSender<Outgoing>,
    pub output: watch::Receiver<Option<Arc<OutFrame>>>,
    pub control: Option<Arc<Control>>,
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
    ) -> App {
        App {
            opts,
            stats,
            publish,
            output,
            control,
            relay_targets: Mutex::new(HashMap::new()),
            viewers: Mutex::new(HashMap::new()),
            next_client: AtomicU64::new(1),
        }
    }
}

impl App {
    /// The counters, with `viewer-dropped` including the frames that viewers which are
    /// behind right now will never get (everything between their last frame and the newest).
    pub fn stats_json(&self) -> Value {
        let latest = self.output.borrow().as_ref().map_or(0, |f| f.seq);
        let behind: u64 = self
            .viewers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|last| match last.load(Ordering::Relaxed) {
                0 => 0,
                last => latest.saturating_sub(last + 1),
            })
            .sum();
        let mut v = self.stats.to_json();
        v["viewer-dropped"] = (self.stats.viewer_dropped.load(Ordering::Relaxed) + behind).into();
        v
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

    fn remove_viewer(&self, id: u64) {
        self.viewers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Records that a viewer is sent frame `seq`; returns the frames it skipped.
    fn viewer_sent(&self, last: &AtomicU64, seq: u64) -> u64 {
        let prev = last.swap(seq, Ordering::Relaxed);
        let gap = if prev == 0 {
            0
        } else {
            seq.saturating_sub(prev + 1)
        };
        self.stats.add(&self.stats.viewer_dropped, gap);
        gap
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

/// The token and origin checks. A browser always sends `Origin` on a WebSocket upgrade:
/// only pages served by this program (same host and port) or listed with --allow-origin
/// may connect. Programs (seed-001 clients, i2i-stats) send no Origin.
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
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    headers: HeaderMap,
    Query(params): Params,
) -> Response {
    if let Err(r) = check_access(&app, &headers, &params) {
        return r.into_response();
    }
    match ws {
        Ok(ws) => upgrade(app, ws, &params),
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
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    headers: HeaderMap,
    Query(params): Params,
) -> Response {
    if let Err(r) = check_access(&app, &headers, &params) {
        return r.into_response();
    }
    match ws {
        Ok(ws) => upgrade(app, ws, &params),
        Err(e) => e.into_response(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum OutputMode {
    None,
    Binary,
    Json,
}

fn upgrade(app: Arc<App>, ws: WebSocketUpgrade, params: &HashMap<String, String>) -> Response {
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
    // Room for a base64 image at the limit, plus the JSON around it; bigger messages
    // close the connection (code 1009) before they are buffered.
    let max = app.opts.max_image_bytes / 3 * 4 + 64 * 1024;
    ws.max_message_size(max.saturating_mul(2))
        .max_frame_size(max.saturating_mul(2))
        .on_upgrade(move |socket| client(app, socket, output, relay))
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

/// Allows `rate` messages per second with bursts of up to one second's worth.
struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u32) -> TokenBucket {
        TokenBucket {
            rate: rate as f64,
            tokens: rate as f64,
            last: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
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

async fn client(app: Arc<App>, socket: WebSocket, output: OutputMode, relay: bool) {
    let id = app.next_client.fetch_add(1, Ordering::Relaxed);
    let stats = app.stats.clone();
    stats.add(&stats.clients, 1);
    stats.add(&stats.connections, 1);
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(CLIENT_QUEUE);
    if relay {
        app.relay_targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx.clone());
    }
    let dropped = Arc::new(AtomicU64::new(0));

    let writer = {
        let app = app.clone();
        let dropped = dropped.clone();
        tokio::spawn(async move {
            let mut frames = app.output.clone();
            frames.mark_changed();
            let viewer_id = (output != OutputMode::None).then(|| app.add_viewer());
            let mut tick = tokio::time::interval(STATS_EVERY);
            let viewer = output != OutputMode::None;
            loop {
                let msg = tokio::select! {
                    m = rx.recv() => match m {
                        Some(m) => m,
                        None => break,
                    },
                    changed = frames.changed(), if viewer => {
                        if changed.is_err() {
                            break;
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
                };
                let closing = matches!(msg, Message::Close(_));
                if sink.send(msg).await.is_err() || closing {
                    break;
                }
            }
            if let Some((id, _)) = viewer_id {
                app.remove_viewer(id);
            }
        })
    };

    let mut bucket = TokenBucket::new(app.opts.max_rate);
    let mut errors = ErrorBudget {
        second: Instant::now(),
        sent: 0,
        count: 0,
    };
    let mut flood_warned = Instant::now() - Duration::from_secs(10);
    while let Some(msg) = stream.next().await {
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                // Over the message size limit, or a broken connection: say why and close.
                stats.add(&stats.rejected, 1);
                let reason = format!("{e}").chars().take(100).collect::<String>();
                let _ = tx
                    .send(Message::Close(Some(CloseFrame {
                        code: 1009,
                        reason: Utf8Bytes::from(format!(
                            "{reason} (limit {} bytes per image)",
                            app.opts.max_image_bytes
                        )),
                    })))
                    .await;
                break;
            }
        };
        let result = match &msg {
            Message::Text(_) | Message::Binary(_) if !bucket.take() => {
                stats.add(&stats.flood_dropped, 1);
                dropped.fetch_add(1, Ordering::Relaxed);
                if flood_warned.elapsed() >= Duration::from_secs(1) {
                    flood_warned = Instant::now();
                    // Error messages are few (once a second here, 5 a second below):
                    // waiting for room holds up this client alone.
                    let _ = tx
                        .send(text(json!({
                            "type": "error",
                            "error": format!("too many messages: more than {} per second are dropped (--max-rate)", app.opts.max_rate),
                            "dropped": dropped.load(Ordering::Relaxed),
                        })))
                        .await;
                }
                continue;
            }
            Message::Text(t) => input::parse_text(t.as_str(), app.opts.max_image_bytes, now_ms()),
            Message::Binary(b) => input::parse_binary(b, app.opts.max_image_bytes, now_ms()),
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        match result {
            Ok(Incoming::Image {
                jpeg,
                timestamp_ms,
                relay: relay_it,
            }) => {
                stats.add(&stats.images_received, 1);
                match app.publish.try_send(Outgoing { timestamp_ms, jpeg }) {
                    Ok(()) => {}
                    Err(_) => stats.add(&stats.publish_dropped, 1),
                }
                if relay_it {
                    if let Message::Text(t) = &msg {
                        relay_to_others(&app, id, t);
                    }
                    stats.add(&stats.acks, 1);
                    if tx
                        .send(text(json!({"type": "ack", "status": "received"})))
                        .await
                        .is_err()
                    {
                        break;
                    }
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
                if tx.send(text(reply)).await.is_err() {
                    break;
                }
            }
            Ok(Incoming::Ping) => {
                let reply = json!({"type": "pong", "timestamp": now_ms() as f64 / 1000.0});
                if tx.send(text(reply)).await.is_err() {
                    break;
                }
            }
            Ok(Incoming::Control { id: req, command }) => {
                control(&app, &tx, req, command.into_bytes()).await;
            }
            Ok(Incoming::Settings { id: req, settings }) => {
                control(&app, &tx, req, settings.to_string().into_bytes()).await;
            }
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
    }
    app.relay_targets
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
    drop(tx);
    let _ = writer.await;
    stats.sub(&stats.clients, 1);
}

fn relay_to_others(app: &App, from: u64, message: &Utf8Bytes) {
    let targets = app.relay_targets.lock().unwrap_or_else(|p| p.into_inner());
    for (id, target) in targets.iter() {
        if *id == from {
            continue;
        }
        match target.try_send(Message::Text(message.clone())) {
            Ok(()) => app.stats.add(&app.stats.relayed, 1),
            Err(_) => app.stats.add(&app.stats.relay_dropped, 1),
        }
    }
}

async fn control(
    app: &Arc<App>,
    tx: &tokio::sync::mpsc::Sender<Message>,
    req: Value,
    payload: Vec<u8>,
) {
    let stats = &app.stats;
    stats.add(&stats.controls, 1);
    let answer = match &app.control {
        None => Err("no settings holder: i2i-web was started with --control none".to_string()),
        Some(c) => {
            let c = c.clone();
            tokio::task::spawn_blocking(move || c.send(&payload))
                .await
                .unwrap_or_else(|e| Err(format!("control task failed: {e}")))
        }
    };
    let reply = match answer {
        Ok(a) => json!({"type": "control", "id": req, "ok": true, "answer": a}),
        Err(e) => {
            stats.add(&stats.control_errors, 1);
            json!({"type": "control", "id": req, "ok": false, "error": e})
        }
    };
    let _ = tx.send(text(reply)).await;
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
        let mut b = TokenBucket::new(10);
        assert_eq!((0..30).filter(|_| b.take()).count(), 10);
        b.last -= Duration::from_millis(500);
        assert_eq!((0..30).filter(|_| b.take()).count(), 5);
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
