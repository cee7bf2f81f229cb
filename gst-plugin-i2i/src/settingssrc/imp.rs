// SPDX-License-Identifier: MPL-2.0
//! settingssrc: a live source of settings updates.
//!
//! A receive thread owns the SUB socket. State snapshots from `i2i-prompt` are turned
//! into changes against the previous snapshot (so heartbeats apply nothing); single
//! messages from programs (chat text, msgpack map, JSON object) are changes as they are.
//! Changes are merged into one pending update, which `create()` pushes as one buffer,
//! at most one per `min-push-interval`: a flood of commands costs the stream a few
//! small buffers, never one per command. The holder's first state is pushed even when it
//! is empty (`{}`): the transform then knows the holder is there and need not wait for
//! it. Malformed messages are counted and posted as warnings (at most a few per second),
//! and the stream goes on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::base_src::CreateSuccess;
use gst_base::subclass::prelude::*;
use i2i_compat::{Alias, Deprecations};

use i2i_core::curve::{ElementCurve, KeyPair, Warn};
use i2i_core::rate_limit::{RateLimit, with_held};
use i2i_core::settings::command::Command;
use i2i_core::settings::hub::ControlClient;
use i2i_core::settings::message::{MAX_MESSAGE_BYTES, decode_message};
use i2i_core::settings::state::{
    APPLIED_EVENT, APPLIED_TOPIC, AppliedReport, REFUSED_EVENT, STATE_TOPIC, Snapshot,
    SnapshotFollower,
};
use i2i_core::settings::{DEFAULT_STATE_PORT, SETTINGS_CAPS_NAME, SettingsUpdate};

use i2i_core::zmq_endpoint::{self, ReceiveSocketType, SetupError};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "settingssrc",
        gst::DebugColorFlags::empty(),
        Some("i2i live settings source"),
    )
});

/// Renamed properties whose old names still work for one release (docs/properties.md).
pub(crate) const RENAMED: &[Alias] = &[Alias {
    old: "report-name",
    new: "client-name",
}];

/// Renamed stats fields, (old, new), still filled under the old names for one release.
const RENAMED_STATS: &[(&str, &str)] = &[
    ("local-endpoint", "last-endpoint"),
    ("reports-dropped", "dropped-reports"),
];

const DEFAULT_ENDPOINT: &str = "tcp://localhost:5556";
const DEFAULT_BIND: bool = false;
const DEFAULT_MIN_PUSH_INTERVAL_MS: u32 = 20;
/// Bus warnings per second before further ones are only counted.
const WARNINGS_PER_SECOND: u32 = 5;
/// Messages handled per wake-up before the thread checks for stop again.
const MAX_BATCH: usize = 1000;

const DEFAULT_SOCKET_TYPE: ReceiveSocketType = ReceiveSocketType::Sub;
/// Messages the socket queues before ZeroMQ drops (many small commands may come at once).
const RCV_HWM: i32 = 100_000;
/// Endpoint examples for the hint of a refused endpoint.
const ENDPOINT_EXAMPLES: &str = "tcp://HOST:5556, tcp://*:5556 or ipc:///path";

#[derive(Debug, Clone)]
struct Settings {
    endpoint: String,
    bind: bool,
    socket_type: ReceiveSocketType,
    min_push_interval_ms: u32,
    /// The name reports carry; None: the transform's element name, host and process.
    report_name: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            endpoint: DEFAULT_ENDPOINT.to_string(),
            bind: DEFAULT_BIND,
            socket_type: DEFAULT_SOCKET_TYPE,
            min_push_interval_ms: DEFAULT_MIN_PUSH_INTERVAL_MS,
            report_name: None,
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Stats {
    /// Messages received (snapshots, commands, malformed).
    received: u64,
    snapshots: u64,
    commands: u64,
    /// Messages refused (malformed, unknown command, bad value, wrong frame count).
    rejected: u64,
    /// Buffers pushed downstream.
    pushed: u64,
    /// Changes merged into an update that was still waiting to be pushed.
    coalesced: u64,
    warnings_suppressed: u64,
    epoch: u64,
    seq: u64,
    last_error: Option<String>,
    /// The endpoint as bound or connected (with the port chosen for `tcp://host:*`).
    local_endpoint: String,
    /// Applied-settings reports sent to the state holder.
    reported: u64,
    /// Reports given up on (no connection to the holder within REPORT_PATIENCE, or more
    /// than REPORT_QUEUE waiting).
    reports_dropped: u64,
}

/// Shared by the receive thread and the streaming thread.
#[derive(Debug, Default)]
struct Shared {
    pending: SettingsUpdate,
    flushing: bool,
    last_push: Option<Instant>,
    stats: Stats,
    /// A fatal receive error, for create() to report.
    fatal: Option<String>,
    /// The state holder's control socket, from its snapshots (connect mode only).
    control_endpoint: Option<String>,
    /// The holder's first state came: push one update even if it changes nothing (an
    /// empty state), so that the transform knows the holder is there and runs at once.
    holder_found: bool,
}

struct Receiver {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    reporter: Reporter,
    // Dropped after the thread (which owns the socket) has ended.
    _ctx: zmq::Context,
}

/// Sends the transform's applied-settings reports to the state holder's control socket
/// (learnt from its snapshots), with the same CURVE keys as the subscription.
struct Reporter {
    tx: Option<std::sync::mpsc::SyncSender<(String, AppliedReport)>>,
    thread: Option<JoinHandle<()>>,
}

/// How long a report waits for the connection to the holder (the first report after a
/// start is made while that connection is still being set up).
const REPORT_PATIENCE: Duration = Duration::from_secs(5);
/// Reports waiting to be sent at most; more are dropped and counted.
const REPORT_QUEUE: usize = 64;

impl Reporter {
    /// Starts the report thread: it owns the control client and retries a report until
    /// the connection is up, so the streaming thread never waits for the network.
    fn start(
        ctx: zmq::Context,
        curve: Option<(KeyPair, String)>,
        shared: Arc<(Mutex<Shared>, Condvar)>,
        stop: Arc<AtomicBool>,
    ) -> Result<Reporter, String> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(String, AppliedReport)>(REPORT_QUEUE);
        let thread = std::thread::Builder::new()
            .name("settingssrc-report".into())
            .spawn(move || {
                let mut client: Option<(String, ControlClient)> = None;
                // Ends when the element drops the sender.
                while let Ok((endpoint, report)) = rx.recv() {
                    if client.as_ref().map(|(e, _)| e.as_str()) != Some(endpoint.as_str()) {
                        let keys = curve.as_ref().map(|(k, s)| (k, s.as_str()));
                        match ControlClient::connect_in(&ctx, &endpoint, keys) {
                            Ok(c) => client = Some((endpoint.clone(), c)),
                            Err(e) => {
                                gst::warning!(CAT, "cannot report to {endpoint}: {e}");
                                lock(&shared.0).stats.reports_dropped += 1;
                                continue;
                            }
                        }
                    }
                    let Some((_, c)) = &client else { continue };
                    let deadline = Instant::now() + REPORT_PATIENCE;
                    let sent = loop {
                        if c.report(&report) {
                            break true;
                        }
                        if Instant::now() >= deadline || stop.load(Ordering::Relaxed) {
                            break false;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    };
                    let mut g = lock(&shared.0);
                    if sent {
                        g.stats.reported += 1;
                    } else {
                        g.stats.reports_dropped += 1;
                        gst::debug!(CAT, "report to {endpoint} not sent (no connection)");
                    }
                }
            })
            .map_err(|e| format!("cannot start the report thread: {e}"))?;
        Ok(Reporter {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues one report; false (and counted) when the queue is full.
    fn send(&self, endpoint: &str, report: AppliedReport, shared: &Mutex<Shared>) -> bool {
        let queued = self
            .tx
            .as_ref()
            .is_some_and(|tx| tx.try_send((endpoint.to_string(), report)).is_ok());
        if !queued {
            lock(shared).stats.reports_dropped += 1;
        }
        queued
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `tcp://host:5556` and port 5560 -> `tcp://host:5560`.
fn control_endpoint(state_endpoint: &str, port: u16) -> Option<String> {
    let rest = state_endpoint.strip_prefix("tcp://")?;
    let (host, _) = rest.rsplit_once(':')?;
    Some(format!("tcp://{host}:{port}"))
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub struct SettingsSrc {
    deprecations: Deprecations,
    settings: Mutex<Settings>,
    /// `curve-key`, `curve-server-key`, `curve-allow` and, while running, the CURVE link.
    curve: ElementCurve,
    shared: Arc<(Mutex<Shared>, Condvar)>,
    receiver: Mutex<Option<Receiver>>,
}

impl Default for SettingsSrc {
    fn default() -> Self {
        SettingsSrc {
            deprecations: Deprecations::default(),
            settings: Mutex::new(Settings::default()),
            curve: ElementCurve::default(),
            shared: Arc::new((Mutex::new(Shared::default()), Condvar::new())),
            receiver: Mutex::new(None),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[glib::object_subclass]
impl ObjectSubclass for SettingsSrc {
    const NAME: &'static str = "GstI2iSettingsSrc";
    type Type = super::SettingsSrc;
    type ParentType = gst_base::PushSrc;
}

impl ObjectImpl for SettingsSrc {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            let mut specs = vec![
                glib::ParamSpecString::builder("endpoint")
                    .nick("Endpoint")
                    .blurb(&format!(
                        "ZeroMQ endpoint of the settings publisher (i2i-prompt publishes on port {DEFAULT_STATE_PORT}); with bind=true the address to listen on, e.g. tcp://*:{DEFAULT_STATE_PORT}"
                    ))
                    .default_value(Some(DEFAULT_ENDPOINT))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("bind")
                    .nick("Bind")
                    .blurb("Listen on the endpoint for programs that connect a PUB socket, instead of connecting to a publisher")
                    .default_value(DEFAULT_BIND)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("socket-type", DEFAULT_SOCKET_TYPE)
                    .nick("Socket type")
                    .blurb("sub: subscribe to a publisher (i2i-prompt, or programs with PUB); pull: take messages from programs with PUSH")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("min-push-interval")
                    .nick("Minimum push interval")
                    .blurb("Milliseconds between two pushed updates; changes arriving faster are merged into one update (0 = push each change as soon as possible)")
                    .maximum(10_000)
                    .default_value(DEFAULT_MIN_PUSH_INTERVAL_MS)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecString::builder("client-name")
                    .nick("Client name")
                    .blurb("How this transform is named in the applied and refused reports the settings holder shows (e.g. worker-3); default: the downstream element's name, the host and the process id (i2i@stage-left/4242)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("last-endpoint")
                    .nick("Last endpoint")
                    .blurb("The endpoint actually bound (with the port ZeroMQ picked for tcp://HOST:*) or connected")
                    .read_only()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("received, snapshots, commands, rejected, refused, pushed, coalesced, warnings-suppressed, epoch, seq, last-error, last-endpoint (as bound, with the chosen port), reported (applied-settings reports sent to i2i-prompt), dropped-reports (given up: no connection to the holder in time, or too many waiting)")
                    .read_only()
                    .build(),
            ];
            specs.extend(ElementCurve::param_specs("settings publishers"));
            i2i_compat::param_specs(specs, RENAMED)
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
        let mut s = lock(&self.settings);
        match name {
            "endpoint" => {
                s.endpoint = value
                    .get::<Option<String>>()
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
            }
            "bind" => s.bind = value.get().unwrap_or(DEFAULT_BIND),
            "socket-type" => s.socket_type = value.get().unwrap_or(DEFAULT_SOCKET_TYPE),
            "min-push-interval" => {
                s.min_push_interval_ms = value.get().unwrap_or(DEFAULT_MIN_PUSH_INTERVAL_MS);
                // A shorter interval may let a waiting update go now.
                self.shared.1.notify_all();
            }
            "client-name" => s.report_name = non_empty(value),
            other => gst::warning!(CAT, imp = self, "unknown property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let name = self
            .deprecations
            .resolve(&*self.obj(), *CAT, RENAMED, pspec.name());
        if let Some(v) = self.curve.property(name) {
            return v;
        }
        let s = lock(&self.settings);
        match name {
            "endpoint" => s.endpoint.to_value(),
            "bind" => s.bind.to_value(),
            "socket-type" => s.socket_type.to_value(),
            "min-push-interval" => s.min_push_interval_ms.to_value(),
            "client-name" => s.report_name.to_value(),
            "last-endpoint" => {
                let e = lock(&self.shared.0).stats.local_endpoint.clone();
                Some(e).filter(|e| !e.is_empty()).to_value()
            }
            "stats" => {
                let st = lock(&self.shared.0).stats.clone();
                let mut stats = gst::Structure::builder("settingssrc-stats")
                    .field("received", st.received)
                    .field("snapshots", st.snapshots)
                    .field("commands", st.commands)
                    .field("rejected", st.rejected)
                    .field("refused", self.curve.refused())
                    .field("pushed", st.pushed)
                    .field("coalesced", st.coalesced)
                    .field("warnings-suppressed", st.warnings_suppressed)
                    .field("epoch", st.epoch)
                    .field("seq", st.seq)
                    .field("last-error", st.last_error.unwrap_or_default())
                    .field("last-endpoint", st.local_endpoint)
                    .field("reported", st.reported)
                    .field("dropped-reports", st.reports_dropped)
                    .build();
                i2i_compat::with_old_fields(&mut stats, RENAMED_STATS);
                stats.to_value()
            }
            _ => unreachable!("property {name} is not registered"),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        obj.set_live(true);
        obj.set_format(gst::Format::Time);
        obj.set_do_timestamp(true);
    }
}

fn non_empty(value: &glib::Value) -> Option<String> {
    value
        .get::<Option<String>>()
        .ok()
        .flatten()
        .filter(|s| !s.trim().is_empty())
}

impl GstObjectImpl for SettingsSrc {}

impl ElementImpl for SettingsSrc {
    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        self.deprecations.post_pending(&*self.obj());
        self.parent_change_state(transition)
    }

    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "i2i settings source",
                "Source/Network",
                "Receives live i2itransform settings over ZeroMQ (i2i-prompt state snapshots, chat commands, msgpack or JSON maps) and pushes them for i2itransform's settings pad",
                "i2i developers",
            )
        });
        Some(&*METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let caps = gst::Caps::new_empty_simple(SETTINGS_CAPS_NAME);
            vec![
                gst::PadTemplate::new(
                    "src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &caps,
                )
                .expect("src pad template"),
            ]
        });
        TEMPLATES.as_ref()
    }
}

/// Everything the receive thread needs.
struct ReceiveContext {
    sock: zmq::Socket,
    endpoint: String,
    bind: bool,
    element: glib::WeakRef<super::SettingsSrc>,
    shared: Arc<(Mutex<Shared>, Condvar)>,
    stop: Arc<AtomicBool>,
    follower: SnapshotFollower,
    warnings: RateLimit,
}

/// Counts and posts a warning (rate-limited); shared by the receive and ZAP threads.
fn warn(
    element: &glib::WeakRef<super::SettingsSrc>,
    shared: &(Mutex<Shared>, Condvar),
    limiter: &mut RateLimit,
    text: String,
) {
    let suppressed = {
        let mut g = lock(&shared.0);
        g.stats.last_error = Some(text.clone());
        if limiter.allow().is_none() {
            g.stats.warnings_suppressed += 1;
            None
        } else {
            Some(std::mem::take(&mut g.stats.warnings_suppressed))
        }
    };
    let Some(element) = element.upgrade() else {
        return;
    };
    gst::warning!(CAT, obj = element, "{text}");
    if let Some(before) = suppressed {
        let text = with_held(format!("Ignored a settings message: {text}"), before);
        gst::element_warning!(element, gst::StreamError::Decode, ("{text}"));
    }
}

impl ReceiveContext {
    fn run(mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            let readable = match self.sock.poll(zmq::POLLIN, 100) {
                Ok(n) => n > 0,
                Err(e) => {
                    let text = format!("receiving settings from {} failed: {e}", self.endpoint);
                    let mut g = lock(&self.shared.0);
                    g.fatal = Some(text);
                    self.shared.1.notify_all();
                    return;
                }
            };
            if !readable {
                continue;
            }
            for _ in 0..MAX_BATCH {
                match self.receive() {
                    Some((frames, peer)) => self.handle(frames, &peer),
                    None => break,
                }
            }
        }
    }

    /// One whole message and the peer's address, or None when nothing is waiting.
    fn receive(&self) -> Option<(Vec<Vec<u8>>, String)> {
        let mut frames = Vec::new();
        let mut peer = String::new();
        loop {
            let mut m = match self.sock.recv_msg(zmq::DONTWAIT) {
                Ok(m) => m,
                Err(_) if frames.is_empty() => return None,
                // The rest of a multipart message is always there once the first frame is.
                Err(_) => break,
            };
            if peer.is_empty()
                && let Some(a) = m.gets("Peer-Address")
            {
                peer = a.to_string();
            }
            let more = m.get_more();
            frames.push(m.to_vec());
            if !more {
                break;
            }
        }
        Some((frames, peer))
    }

    fn handle(&mut self, frames: Vec<Vec<u8>>, peer: &str) {
        let from = if peer.is_empty() {
            self.endpoint.clone()
        } else {
            peer.to_string()
        };
        lock(&self.shared.0).stats.received += 1;
        // The holder's first state since start (pushed even if empty).
        let mut first_state = false;
        let change = match frames.len() {
            2 if frames[0] == STATE_TOPIC => match Snapshot::decode(&frames[1]) {
                Ok(snap) => {
                    first_state = self.follower.position().is_none();
                    let changes = self.follower.follow(&snap);
                    let mut g = lock(&self.shared.0);
                    g.stats.snapshots += 1;
                    if let Some((epoch, seq)) = self.follower.position() {
                        g.stats.epoch = epoch;
                        g.stats.seq = seq;
                    }
                    if !self.bind {
                        g.control_endpoint = snap
                            .control_port
                            .and_then(|p| control_endpoint(&self.endpoint, p));
                    }
                    Ok(changes)
                }
                Err(e) => Err(e),
            },
            // Reports of applied values, republished by i2i-prompt for its consoles.
            2 if frames[0] == APPLIED_TOPIC => return,
            1 => match decode_message(&frames[0]) {
                Ok(Command::Update(u)) => {
                    lock(&self.shared.0).stats.commands += 1;
                    Ok(u)
                }
                Ok(Command::Help | Command::Status) => {
                    gst::debug!(
                        CAT,
                        "ignored /help or /status from {from}: nothing to answer on a subscriber"
                    );
                    return;
                }
                Err(e) => Err(e),
            },
            n => {
                let total: usize = frames.iter().map(Vec::len).sum();
                Err(if total > MAX_MESSAGE_BYTES {
                    format!(
                        "message of {total} bytes is larger than the {MAX_MESSAGE_BYTES}-byte limit"
                    )
                } else {
                    format!(
                        "expected one frame (chat text, msgpack map or JSON object) or an i2i-state snapshot, found {n} frames"
                    )
                })
            }
        };
        match change {
            Ok(u) if u.is_empty() => {
                if first_state {
                    gst::debug!(CAT, "the holder at {from} has no settings yet");
                    lock(&self.shared.0).holder_found = true;
                    self.shared.1.notify_all();
                }
            }
            Ok(u) => {
                gst::debug!(CAT, "change from {from}: {}", u.summary());
                let mut g = lock(&self.shared.0);
                if !g.pending.is_empty() {
                    g.stats.coalesced += 1;
                }
                g.pending.merge(u);
                self.shared.1.notify_all();
            }
            Err(e) => {
                lock(&self.shared.0).stats.rejected += 1;
                warn(
                    &self.element,
                    &self.shared,
                    &mut self.warnings,
                    format!("from {from}: {e}"),
                );
            }
        }
    }
}

impl SettingsSrc {
    /// Where the CURVE refusals go: the log, the bus (rate-limited by the CURVE code) and
    /// `last-error`.
    fn curve_warnings(&self) -> Warn {
        let element = self.obj().downgrade();
        let shared = self.shared.clone();
        Arc::new(move |text: &str, post: bool| {
            lock(&shared.0).stats.last_error = Some(text.to_string());
            let Some(element) = element.upgrade() else {
                return;
            };
            gst::warning!(CAT, obj = element, "{text}");
            if post {
                gst::element_warning!(element, gst::ResourceError::OpenRead, ("{text}"));
            }
        })
    }

    /// Opens the socket with the ZeroMQ elements' set-up and CURVE ([`zmq_endpoint::open`])
    /// and starts the receive and report threads.
    fn open(&self) -> Result<Receiver, gst::ErrorMessage> {
        let s = lock(&self.settings).clone();
        let fail = |text: String| gst::error_msg!(gst::ResourceError::OpenRead, ("{}", text));
        let options = zmq_endpoint::Options {
            endpoint: &s.endpoint,
            bind: s.bind,
            linger_ms: 0,
            send_hwm: None,
            rcv_hwm: Some(RCV_HWM),
            // Bound, anyone may connect: a bound on what one message may cost.
            max_message_size: s.bind.then_some(16 * MAX_MESSAGE_BYTES as i64),
            name: s.socket_type.nick(),
            purpose: ", for settings",
            examples: ENDPOINT_EXAMPLES,
            peer: "settings publisher",
        };
        let subscribe = s.socket_type == ReceiveSocketType::Sub;
        let (opened, ()) = zmq_endpoint::open(
            s.socket_type.zmq_type(),
            &options,
            self.curve_warnings(),
            &self.curve,
            |_, sock| {
                if subscribe {
                    sock.set_subscribe(b"").map_err(|e| ("subscribe", e))?;
                }
                Ok(())
            },
            |_| false,
        )
        .map_err(|e| match e {
            SetupError::Settings(text) => {
                gst::error_msg!(gst::ResourceError::Settings, ("{}", text))
            }
            SetupError::Open(text) => fail(text),
        })?;
        let zmq_endpoint::Opened {
            socket: sock,
            context: ctx,
            endpoint: local_endpoint,
        } = opened;
        gst::info!(
            CAT,
            imp = self,
            "{} {}{}",
            zmq_endpoint::done_verb(s.bind),
            local_endpoint,
            if self.curve.settings().enabled() {
                " with CURVE"
            } else {
                ""
            }
        );
        {
            let mut g = lock(&self.shared.0);
            *g = Shared::default();
            g.stats.local_endpoint = local_endpoint;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let rx = ReceiveContext {
            sock,
            endpoint: s.endpoint.clone(),
            bind: s.bind,
            element: self.obj().downgrade(),
            shared: self.shared.clone(),
            stop: stop.clone(),
            follower: SnapshotFollower::default(),
            warnings: RateLimit::per_second(WARNINGS_PER_SECOND),
        };
        let thread = std::thread::Builder::new()
            .name("settingssrc-rx".into())
            .spawn(move || rx.run())
            .map_err(|e| fail(format!("cannot start the receive thread: {e}")))?;
        // Reports go to the holder with the keys of the subscription.
        let reporter = Reporter::start(
            ctx.clone(),
            self.curve.client_keys(),
            self.shared.clone(),
            stop.clone(),
        )
        .map_err(|e| {
            stop.store(true, Ordering::Relaxed);
            fail(e)
        })?;
        Ok(Receiver {
            stop,
            thread: Some(thread),
            reporter,
            _ctx: ctx,
        })
    }
}

impl SettingsSrc {
    /// `client-name`, or the transform this element feeds (the peer of its src pad), the
    /// host and the process id: several workers on one machine stay apart.
    fn report_name(&self) -> String {
        if let Some(n) = lock(&self.settings).report_name.clone() {
            return n;
        }
        let element = self
            .obj()
            .static_pad("src")
            .and_then(|p| p.peer())
            .and_then(|p| p.parent_element())
            .map(|e| e.name().to_string())
            .unwrap_or_else(|| self.obj().name().to_string());
        format!("{element}@{}/{}", host_name(), std::process::id())
    }

    /// Forwards what the transform refused to the state holder, for its consoles.
    fn report_refused(&self, s: &gst::StructureRef) {
        let refused: Vec<String> = s
            .get::<&str>("refused")
            .unwrap_or("(no reason given)")
            .lines()
            .map(str::to_string)
            .collect();
        self.send_report(SettingsUpdate::default(), None, refused);
    }

    /// Forwards what the transform applied to the state holder, for its consoles.
    fn report(&self, s: &gst::StructureRef) {
        let settings = match s
            .get::<&str>("settings")
            .map(|j| SettingsUpdate::from_json(j.as_bytes()))
        {
            Ok(Ok(u)) => u,
            Ok(Err(e)) => {
                gst::warning!(CAT, imp = self, "applied report not understood: {e}");
                return;
            }
            Err(e) => {
                gst::warning!(CAT, imp = self, "applied report without settings: {e}");
                return;
            }
        };
        let frame = s.get::<u64>("frame-index").ok();
        self.send_report(settings, frame, Vec::new());
    }

    fn send_report(&self, settings: SettingsUpdate, frame: Option<u64>, refused: Vec<String>) {
        let (endpoint, seq) = {
            let g = lock(&self.shared.0);
            (g.control_endpoint.clone(), g.stats.seq)
        };
        let Some(endpoint) = endpoint else {
            gst::debug!(
                CAT,
                imp = self,
                "no state holder to report to (frame {frame:?}: {})",
                settings.summary()
            );
            return;
        };
        let mut guard = lock(&self.receiver);
        let Some(rx) = guard.as_mut() else { return };
        let report = AppliedReport {
            source: self.report_name(),
            seq: Some(seq),
            frame,
            settings,
            refused,
            key: None,
        };
        let summary = report.settings.summary();
        if rx.reporter.send(&endpoint, report, &self.shared.0) {
            gst::debug!(CAT, imp = self, "reporting to {endpoint}: {summary}");
        } else {
            gst::debug!(CAT, imp = self, "report queue full, dropped: {summary}");
        }
    }
}

impl BaseSrcImpl for SettingsSrc {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let receiver = self.open()?;
        *lock(&self.receiver) = Some(receiver);
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        // The ZAP handler and monitor first, then the receive thread (with the socket), then
        // the context.
        self.curve.stop();
        let receiver = lock(&self.receiver).take();
        drop(receiver);
        Ok(())
    }

    fn is_seekable(&self) -> bool {
        false
    }

    fn event(&self, event: &gst::Event) -> bool {
        if let gst::EventView::CustomUpstream(e) = event.view()
            && let Some(s) = e.structure()
            && s.name() == APPLIED_EVENT
        {
            self.report(s);
            return true;
        }
        if let gst::EventView::CustomUpstream(e) = event.view()
            && let Some(s) = e.structure()
            && s.name() == REFUSED_EVENT
        {
            self.report_refused(s);
            return true;
        }
        self.parent_event(event)
    }

    fn unlock(&self) -> Result<(), gst::ErrorMessage> {
        lock(&self.shared.0).flushing = true;
        self.shared.1.notify_all();
        Ok(())
    }

    fn unlock_stop(&self) -> Result<(), gst::ErrorMessage> {
        lock(&self.shared.0).flushing = false;
        Ok(())
    }
}

impl PushSrcImpl for SettingsSrc {
    fn create(
        &self,
        _buffer: Option<&mut gst::BufferRef>,
    ) -> Result<CreateSuccess, gst::FlowError> {
        let (mutex, cond) = &*self.shared;
        let mut g = lock(mutex);
        let (update, index) = loop {
            if g.flushing {
                return Err(gst::FlowError::Flushing);
            }
            if let Some(e) = g.fatal.take() {
                gst::element_imp_error!(self, gst::ResourceError::Read, ["{}", e]);
                return Err(gst::FlowError::Error);
            }
            if !g.pending.is_empty() || g.holder_found {
                let interval =
                    Duration::from_millis(u64::from(lock(&self.settings).min_push_interval_ms));
                let ready_at = g.last_push.map(|t| t + interval);
                let now = Instant::now();
                match ready_at {
                    Some(at) if at > now => {
                        g = cond
                            .wait_timeout(g, at - now)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                        continue;
                    }
                    _ => {
                        g.last_push = Some(now);
                        g.stats.pushed += 1;
                        g.holder_found = false;
                        break (std::mem::take(&mut g.pending), g.stats.pushed);
                    }
                }
            }
            g = cond.wait(g).unwrap_or_else(|e| e.into_inner());
        };
        drop(g);
        gst::debug!(
            CAT,
            imp = self,
            "pushing update {index}: {}",
            update.summary()
        );
        let mut buffer = gst::Buffer::from_mut_slice(update.to_json());
        if let Some(b) = buffer.get_mut() {
            b.set_offset(index - 1);
        }
        Ok(CreateSuccess::NewBuffer(buffer))
    }
}
