// SPDX-License-Identifier: MPL-2.0
//! `zmqworkersrc`: a live source of `image/jpeg` frames, or latents
//! (`application/x-i2i-latent`), handed out by a `zmqdispatchsink`.
//!
//! A thread owns the DEALER socket. It tells the primary how many frames it may send
//! (credit = frames taken downstream + `batch-size` x `prefetch`), so the worker asks for
//! more exactly when its pipeline took a frame: a busy worker asks for nothing. The same
//! ready message doubles as the heartbeat. The primary's heartbeats carry its session: a
//! new session (the primary restarted) resets the counts, and the worker announces itself
//! again; ZeroMQ reconnects the socket by itself. At the primary's drain request (its
//! input ended) the source sends a drain query downstream, so elements that hold frames
//! (the stream batch of i2itransform) can finish them.
//!
//! Each frame becomes one buffer: offset = index, PTS = running time when it is pushed,
//! and the frame's original time as a `timestamp/x-unix` reference meta.
//!
//! A job of latents (one tensor message per frame, [`crate::scaleout::wire`]) is checked
//! frame by frame as `zmqmsgpacksrc` checks them ([`crate::latent`]): a truncated payload,
//! an unknown dtype, a shape that is not one frame, or another model's meta is dropped,
//! counted by reason in `stats` and reported (rate-limited), and its credit given back;
//! good frames come out as float32 `application/x-i2i-latent` with caps from the meta.

use std::collections::VecDeque;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::base_src::CreateSuccess;
use gst_base::subclass::prelude::*;
use i2i_compat::{Alias, Deprecations};

use crate::frame_file::{self, FrameFileError};
use crate::latent::{self, LatentDrop, LatentDrops, LatentPayload, LatentStream};
use crate::scaleout;
use crate::scaleout::socket_thread::{self, SocketThread};
use crate::scaleout::wire::{self, PrimaryMsg, Ready};
use crate::source_output::{self, Offered, SourceOutput};
use crate::zmq_element;
use i2i_core::curve::ElementCurve;
use i2i_core::jpeg::{DEFAULT_MAX_PIXELS, JpegCheckError, jpeg_size};
use i2i_core::protocol::{self, Payload};
use i2i_core::rate_limit::RateLimit;
use i2i_core::zmq_endpoint;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "zmqworkersrc",
        gst::DebugColorFlags::empty(),
        Some("Scale-out: a worker's frame source"),
    )
});

/// Renamed properties whose old names still work for one release (docs/properties.md).
pub(crate) const RENAMED: &[Alias] = &[Alias {
    old: "worker-name",
    new: "client-name",
}];

/// Renamed stats fields, (old, new), still filled under the old names for one release.
const RENAMED_STATS: &[(&str, &str)] = &[
    ("malformed", "dropped-malformed"),
    ("not-jpeg", "dropped-not-jpeg"),
    ("missing-file", "dropped-missing-file"),
    ("oversize", "dropped-oversize"),
    ("refused-path", "dropped-refused-path"),
    ("overflow", "dropped-overflow"),
];

const DEFAULT_ENDPOINT: &str = "tcp://localhost:5555";
const DEFAULT_BATCH_SIZE: u32 = 1;
const DEFAULT_PREFETCH: u32 = 1;
const DEFAULT_HEARTBEAT_INTERVAL_MS: u32 = 250;
const DEFAULT_PRIMARY_TIMEOUT_MS: u32 = 2000;

#[derive(Debug, Clone)]
struct Settings {
    endpoint: String,
    batch_size: u32,
    prefetch: u32,
    heartbeat_interval_ms: u32,
    primary_timeout_ms: u32,
    worker_name: Option<String>,
    max_message_size: i64,
    framerate: gst::Fraction,
    max_pixels: u64,
    frame_folder: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            endpoint: DEFAULT_ENDPOINT.into(),
            batch_size: DEFAULT_BATCH_SIZE,
            prefetch: DEFAULT_PREFETCH,
            heartbeat_interval_ms: DEFAULT_HEARTBEAT_INTERVAL_MS,
            primary_timeout_ms: DEFAULT_PRIMARY_TIMEOUT_MS,
            worker_name: None,
            max_message_size: source_output::DEFAULT_MAX_MESSAGE_SIZE,
            framerate: source_output::DEFAULT_FRAMERATE,
            max_pixels: DEFAULT_MAX_PIXELS,
            frame_folder: None,
        }
    }
}

fn default_worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    format!("{host}:{}", std::process::id())
}

/// What a held frame is: a JPEG of this size, or latents with these caps.
enum Kind {
    Jpeg((usize, usize)),
    Latent(gst::Caps),
}

struct Item {
    index: u64,
    timestamp_ms: i64,
    data: Vec<u8>,
    kind: Kind,
    session: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    frames_in: u64,
    frames_out: u64,
    jobs: u64,
    malformed: u64,
    not_jpeg: u64,
    missing_file: u64,
    refused_path: u64,
    oversize: u64,
    overflow: u64,
    latents: u64,
    latent: LatentDrops,
    sessions: u64,
    primary_lost: u64,
    drains: u64,
    /// Frames of a kind downstream does not take (a JPEG before i2idecode).
    kind: u64,
}

struct Core {
    queue: VecDeque<Item>,
    /// The primary's session we count in; 0 before we heard from one.
    session: u64,
    /// Frames of this session pushed downstream (or dropped as bad).
    taken: u64,
    drain_requested: bool,
    stats: Stats,
}

/// The core, its flags, the condvar and the wake-up.
type Shared = socket_thread::Shared<Core>;

struct State {
    io: SocketThread<Core>,
}

#[derive(Default)]
pub struct ZmqWorkerSrc {
    curve: ElementCurve,
    deprecations: Deprecations,
    settings: Mutex<Settings>,
    /// The endpoint connected to, as ZeroMQ reports it.
    last_endpoint: Mutex<Option<String>>,
    state: Mutex<Option<State>>,
    last_stats: Mutex<Stats>,
    output: Mutex<SourceOutput>,
    kind_limit: Mutex<RateLimit>,
}

#[glib::object_subclass]
impl ObjectSubclass for ZmqWorkerSrc {
    const NAME: &'static str = "GstZmqWorkerSrc";
    type Type = super::ZmqWorkerSrc;
    type ParentType = gst_base::PushSrc;
}

enum Report {
    Dropped(gst::ResourceError, String),
    Malformed(String),
    /// A latent frame refused by [`latent::check`] (the text names it and why).
    Latent(String),
    Joined(u64),
    PrimaryLost,
    /// Nothing heard from any primary since start, for `primary-timeout`.
    NoAnswer,
    /// A primary answered after [`Report::NoAnswer`].
    Answered,
}

/// The thread that owns the DEALER socket.
struct Io {
    element: glib::WeakRef<super::ZmqWorkerSrc>,
    shared: Arc<Shared>,
    socket: zmq::Socket,
    _context: zmq::Context,
    name: String,
    batch: u32,
    room: u64,
    heartbeat: Duration,
    primary_timeout: Duration,
    max_message_size: i64,
    /// Most frames held before the oldest are dropped (a primary that ignores credits).
    max_held: usize,
    drop_limit: RateLimit,
    max_pixels: u64,
    frame_folder: Option<std::path::PathBuf>,
    framerate: gst::Fraction,
    endpoint: String,
    /// Channels, layout and scaling factor of the first latents received.
    latent_stream: Option<LatentStream>,
}

impl Io {
    fn run(mut self) {
        let started = Instant::now();
        let mut next_ready = started;
        let mut sent_state: Option<(u64, u64)> = None;
        let mut last_heard: Option<Instant> = None;
        let mut said_no_answer = false;
        loop {
            let timeout = next_ready.saturating_duration_since(Instant::now());
            if !self.shared.poll(&self.socket, timeout, *CAT) {
                break;
            }
            let mut reports = Vec::new();
            if self.receive(&mut reports) {
                last_heard = Some(Instant::now());
                if std::mem::take(&mut said_no_answer) {
                    reports.push(Report::Answered);
                }
            }
            let now = Instant::now();
            if last_heard.is_none()
                && !said_no_answer
                && now.saturating_duration_since(started) > self.primary_timeout
            {
                // Say it within seconds: a wrong address otherwise looks like a quiet primary.
                said_no_answer = true;
                reports.push(Report::NoAnswer);
            }
            let (session, taken) = {
                let mut core = self.shared.lock();
                if core.session != 0
                    && last_heard
                        .is_none_or(|t| now.saturating_duration_since(t) > self.primary_timeout)
                {
                    // Count from zero with whichever primary answers next.
                    core.session = 0;
                    core.taken = 0;
                    core.stats.primary_lost += 1;
                    reports.push(Report::PrimaryLost);
                }
                (core.session, core.taken)
            };
            if now >= next_ready || sent_state != Some((session, taken)) {
                self.send_ready(session, taken);
                sent_state = Some((session, taken));
                next_ready = now + self.heartbeat;
            }
            self.shared.cond.notify_all();
            self.post(reports);
        }
        // Tell the primary at once that this worker is gone, so that it does not wait for
        // the timeout; what it still had queued here goes to other workers.
        if self.shared.lock().session != 0 {
            let _ = self
                .socket
                .send_multipart(wire::encode_bye(), zmq::DONTWAIT);
        }
        gst::debug!(CAT, "socket thread ends");
    }

    fn send_ready(&self, session: u64, taken: u64) {
        let ready = Ready {
            session,
            credit: taken + self.room,
            taken,
            batch: self.batch,
            name: self.name.clone(),
        };
        match self
            .socket
            .send_multipart(wire::encode_ready(&ready), zmq::DONTWAIT)
        {
            // Not connected (ZMQ_IMMEDIATE): the next heartbeat tries again.
            Ok(()) | Err(zmq::Error::EAGAIN) => {}
            Err(e) => gst::warning!(CAT, "sending ready failed: {e}"),
        }
    }

    /// Receives what is waiting; true if anything came from the primary.
    fn receive(&mut self, reports: &mut Vec<Report>) -> bool {
        let mut heard = false;
        loop {
            let parts = match self.socket.recv_multipart(zmq::DONTWAIT) {
                Ok(parts) => parts,
                Err(zmq::Error::EAGAIN) => return heard,
                Err(e) => {
                    gst::warning!(CAT, "receive failed: {e}");
                    return heard;
                }
            };
            heard = true;
            match wire::decode_primary(&parts) {
                Ok(PrimaryMsg::Heartbeat { session }) => self.on_session(session, reports),
                Ok(PrimaryMsg::Drain { session }) => {
                    self.on_session(session, reports);
                    let mut core = self.shared.lock();
                    core.drain_requested = true;
                    core.stats.drains += 1;
                }
                Ok(PrimaryMsg::Job(body)) => self.on_job(body, reports),
                Ok(PrimaryMsg::LatentJob(frames)) => self.on_latent_job(&frames, reports),
                Err(e) => {
                    self.shared.lock().stats.malformed += 1;
                    self.report_drop(reports, None, format!("{e}"));
                }
            }
        }
    }

    fn on_session(&self, session: u64, reports: &mut Vec<Report>) {
        let mut core = self.shared.lock();
        if core.session != session {
            core.session = session;
            core.taken = 0;
            core.stats.sessions += 1;
            reports.push(Report::Joined(session));
        }
    }

    fn report_drop(
        &mut self,
        reports: &mut Vec<Report>,
        kind: Option<gst::ResourceError>,
        text: String,
    ) {
        if let Some(text) = self.drop_limit.message(text) {
            reports.push(match kind {
                Some(k) => Report::Dropped(k, text),
                None => Report::Malformed(text),
            });
        }
    }

    /// A job of latents: each tensor message checked on its own ([`latent::check`]).
    fn on_latent_job(&mut self, messages: &[&[u8]], reports: &mut Vec<Report>) {
        let mut items = Vec::with_capacity(messages.len());
        let mut bad = 0u64;
        for msg in messages {
            match latent::check(
                msg,
                self.max_pixels,
                self.framerate,
                &mut self.latent_stream,
            ) {
                Ok(l) => {
                    let data = match l.payload {
                        LatentPayload::InMessage(p) => p.to_vec(),
                        LatentPayload::Converted(v) => v,
                    };
                    items.push((l.index, l.timestamp_ms, data, Kind::Latent(l.caps)));
                }
                Err((why, text)) => {
                    bad += 1;
                    {
                        let stats = &mut self.shared.lock().stats;
                        if !stats.latent.count(why) {
                            match why {
                                LatentDrop::Oversize => stats.oversize += 1,
                                _ => stats.malformed += 1,
                            }
                        }
                    }
                    let text = format!("{text} (job from the primary at {})", self.endpoint);
                    if let Some(text) = self.drop_limit.message(text) {
                        reports.push(Report::Latent(text));
                    }
                }
            }
        }
        let latents = items.len() as u64;
        self.queue_items(items, bad);
        self.shared.lock().stats.latents += latents;
    }

    fn on_job(&mut self, body: &[u8], reports: &mut Vec<Report>) {
        let frames = match protocol::decode(body) {
            Ok(frames) => frames,
            Err(e) => {
                let mut core = self.shared.lock();
                core.stats.malformed += 1;
                // The frames of a message we cannot read are still owed credit.
                core.taken += 1;
                drop(core);
                self.report_drop(reports, None, format!("job message: {e}"));
                return;
            }
        };
        let timestamps = wire::batch_timestamps(body).filter(|t| t.len() == frames.len());
        let mut items = Vec::with_capacity(frames.len());
        let mut bad = 0u64;
        for (i, f) in frames.iter().enumerate() {
            let jpeg = match &f.jpeg {
                Payload::Bytes(b) => b.to_vec(),
                Payload::Path(path) => match frame_file::read(
                    path,
                    self.frame_folder.as_deref(),
                    u64::try_from(self.max_message_size).unwrap_or(u64::MAX),
                ) {
                    Ok(data) => data,
                    Err(e) => {
                        bad += 1;
                        let mut core = self.shared.lock();
                        let kind = match e {
                            FrameFileError::Refused(_) => {
                                core.stats.refused_path += 1;
                                gst::ResourceError::OpenRead
                            }
                            FrameFileError::Missing(_) => {
                                core.stats.missing_file += 1;
                                gst::ResourceError::NotFound
                            }
                            FrameFileError::Oversize(_) => {
                                core.stats.oversize += 1;
                                gst::ResourceError::NoSpaceLeft
                            }
                        };
                        drop(core);
                        let text = e.to_string();
                        self.report_drop(reports, Some(kind), format!("frame {}: {text}", f.index));
                        continue;
                    }
                },
            };
            let size = match jpeg_size(&jpeg, self.max_pixels) {
                Ok(size) => size,
                Err(text) => {
                    bad += 1;
                    match text {
                        JpegCheckError::NotJpeg(_) => self.shared.lock().stats.not_jpeg += 1,
                        JpegCheckError::TooLarge(_) => self.shared.lock().stats.oversize += 1,
                    }
                    self.report_drop(reports, None, format!("frame {}: {text}", f.index));
                    continue;
                }
            };
            items.push((
                f.index,
                timestamps.as_ref().map(|t| t[i]).unwrap_or(f.timestamp_ms),
                jpeg,
                Kind::Jpeg(size),
            ));
        }
        self.queue_items(items, bad);
    }

    /// Queues a job's good frames; its `bad` ones are credited back at once.
    fn queue_items(&self, items: Vec<(u64, i64, Vec<u8>, Kind)>, bad: u64) {
        let mut core = self.shared.lock();
        core.stats.jobs += 1;
        core.stats.frames_in += items.len() as u64;
        // Dropped frames never go downstream: give their credit back now.
        core.taken += bad;
        let session = core.session;
        for (index, timestamp_ms, data, kind) in items {
            if core.queue.len() >= self.max_held {
                core.queue.pop_front();
                core.stats.overflow += 1;
                core.taken += 1;
            }
            core.queue.push_back(Item {
                index,
                timestamp_ms,
                data,
                kind,
                session,
            });
        }
    }

    fn post(&self, reports: Vec<Report>) {
        if reports.is_empty() {
            return;
        }
        let Some(element) = self.element.upgrade() else {
            return;
        };
        for r in reports {
            match r {
                Report::Joined(session) => {
                    gst::info!(
                        CAT,
                        obj = element,
                        "working for primary session {session:#x}"
                    );
                    let s = gst::Structure::builder("zmqworkersrc-primary")
                        .field("event", "joined")
                        .field("session", session)
                        .build();
                    let _ = element
                        .post_message(gst::message::Element::builder(s).src(&element).build());
                }
                Report::PrimaryLost => {
                    gst::element_warning!(
                        element,
                        gst::ResourceError::Read,
                        (
                            "No word from the primary for {} ms: waiting for it to come back (reconnecting by itself)",
                            self.primary_timeout.as_millis()
                        )
                    );
                }
                Report::NoAnswer => {
                    let text = format!(
                        "No primary answers at {} (nothing heard for {} ms since start){}: is primary.sh (zmqdispatchsink) running there, on this port (--dispatch-port), and is the port reachable from here? Still trying",
                        self.endpoint,
                        self.primary_timeout.as_millis(),
                        unresolved_host(&self.endpoint)
                            .map(|e| format!("; {e}"))
                            .unwrap_or_default()
                    );
                    gst::element_warning!(element, gst::ResourceError::OpenRead, ("{text}"));
                }
                Report::Answered => {
                    let text = format!("The primary at {} answered", self.endpoint);
                    gst::info!(CAT, obj = element, "{text}");
                    gst::element_info!(
                        element,
                        gst::ResourceError::OpenRead,
                        ("{text}"),
                        ["{text}"]
                    );
                }
                Report::Dropped(kind, text) => {
                    gst::element_warning!(element, kind, ("Dropped a frame: {text}"));
                }
                Report::Latent(text) => {
                    gst::element_warning!(element, gst::StreamError::Decode, ("{text}"));
                }
                Report::Malformed(text) => {
                    gst::element_warning!(
                        element,
                        gst::StreamError::Decode,
                        ("Dropped a message from the primary: {text}")
                    );
                }
            }
        }
    }
}

/// Says why `endpoint`'s host name cannot be used, when it does not resolve.
fn unresolved_host(endpoint: &str) -> Option<String> {
    use std::net::ToSocketAddrs;
    let rest = endpoint.strip_prefix("tcp://")?;
    let (host, port) = rest.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match (host, port).to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(_)) => None,
        Ok(None) => Some(format!("the host name '{host}' has no address")),
        Err(e) => Some(format!("the host name '{host}' does not resolve ({e})")),
    }
}

impl ZmqWorkerSrc {
    /// Waits for the next frame from the primary (answering a drain request meanwhile) and
    /// asks for the one after it.
    fn next_item(&self, shared: &Shared) -> Result<Item, gst::FlowError> {
        let item = {
            let mut core = shared.lock();
            loop {
                if core.flushing {
                    return Err(gst::FlowError::Flushing);
                }
                if core.drain_requested {
                    core.drain_requested = false;
                    drop(core);
                    self.drain_downstream();
                    core = shared.lock();
                    continue;
                }
                if let Some(item) = core.queue.pop_front() {
                    if item.session == core.session {
                        core.taken += 1;
                    }
                    break item;
                }
                core = shared.wait(core);
            }
        };
        // Ask for the next frame now, while this one goes through the pipeline.
        shared.waker.wake();
        Ok(item)
    }

    fn shared(&self) -> Option<Arc<Shared>> {
        self.state
            .lock()
            .unwrap()
            .as_ref()
            .map(|s| s.io.shared().clone())
    }

    fn stats(&self) -> Stats {
        match self.shared() {
            Some(shared) => shared.lock().stats,
            None => *self.last_stats.lock().unwrap(),
        }
    }

    /// Asks downstream to finish the frames it holds (the input ended on the primary).
    fn drain_downstream(&self) {
        let mut q = gst::query::Drain::new();
        let answered = self.obj().src_pad().peer_query(&mut q);
        gst::debug!(CAT, imp = self, "drain query answered: {answered}");
    }
}

impl ObjectImpl for ZmqWorkerSrc {
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
                    .blurb("The primary's zmqdispatchsink to connect to, e.g. tcp://10.0.0.1:5555")
                    .default_value(Some(DEFAULT_ENDPOINT))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("batch-size")
                    .nick("Batch size")
                    .blurb("Consecutive frames asked for per job message; set it to the batch-size of the i2itransform in this pipeline")
                    .minimum(1)
                    .maximum(1024)
                    .default_value(DEFAULT_BATCH_SIZE)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("prefetch")
                    .nick("Prefetch")
                    .blurb("Batches asked for ahead of what the pipeline has taken, so the next frames are here when it is ready (1 hides the network round trip; more adds latency and frames a crash can lose)")
                    .minimum(1)
                    .maximum(64)
                    .default_value(DEFAULT_PREFETCH)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("heartbeat-interval")
                    .nick("Heartbeat interval")
                    .blurb("How often (ms) the worker repeats its ready message as a heartbeat; keep it well under the primary's worker-timeout")
                    .minimum(10)
                    .maximum(60_000)
                    .default_value(DEFAULT_HEARTBEAT_INTERVAL_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("primary-timeout")
                    .nick("Primary timeout")
                    .blurb("No word from the primary for this long (ms): consider it gone and announce this worker afresh to whichever primary answers")
                    .minimum(100)
                    .maximum(600_000)
                    .default_value(DEFAULT_PRIMARY_TIMEOUT_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("client-name")
                    .nick("Client name")
                    .blurb("Name shown in the primary's stats and messages (unset: HOSTNAME:PID of the worker process, chosen at start)")
                    .mutable_ready()
                    .build(),
                source_output::max_message_size_pspec("job message (and batch JPEG file)"),
                source_output::framerate_pspec(),
                source_output::max_pixels_pspec(),
                frame_file::frame_folder_pspec(),
                glib::ParamSpecString::builder("last-endpoint")
                    .nick("Last endpoint")
                    .blurb("The endpoint actually connected (as ZeroMQ reports it)")
                    .read_only()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("frames-in (of which latents), frames-out, jobs, dropped (sum of dropped-malformed, dropped-not-jpeg, dropped-missing-file, dropped-oversize, dropped-refused-path, dropped-overflow (the local queue full), dropped-latent-size (payload not matching its meta: truncated or wrong meta), dropped-latent-dtype (not float32 or float16), dropped-latent-shape (not one [1, C, H, W] frame, or over max-pixels elements), dropped-latent-meta (image size not 8 x the latent size, or channels, layout or scaling factor other than the stream's first latents), dropped-kind (a JPEG where downstream takes only latents, or the reverse)), sessions (primaries joined), primary-lost, drains, queued, refused (CURVE handshakes failed)")
                    .read_only()
                    .build(),
            ];
            v.extend(
                ElementCurve::param_specs("peers")
                    .into_iter()
                    .filter(|p| p.name() != "curve-allow"),
            );
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
            "batch-size" => settings.batch_size = value.get().expect("type checked upstream"),
            "prefetch" => settings.prefetch = value.get().expect("type checked upstream"),
            "heartbeat-interval" => {
                settings.heartbeat_interval_ms = value.get().expect("type checked upstream")
            }
            "primary-timeout" => {
                settings.primary_timeout_ms = value.get().expect("type checked upstream")
            }
            "client-name" => {
                settings.worker_name = value
                    .get::<Option<String>>()
                    .expect("type checked upstream")
                    .filter(|n| !n.is_empty())
            }
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
            "batch-size" => settings.batch_size.to_value(),
            "prefetch" => settings.prefetch.to_value(),
            "heartbeat-interval" => settings.heartbeat_interval_ms.to_value(),
            "primary-timeout" => settings.primary_timeout_ms.to_value(),
            // Unset reads as unset: the HOSTNAME:PID default is chosen at start, in the
            // worker's own process (gst-inspect would otherwise show its own PID).
            "client-name" => settings.worker_name.to_value(),
            "last-endpoint" => self.last_endpoint.lock().unwrap().to_value(),
            "max-message-size" => settings.max_message_size.to_value(),
            "framerate" => settings.framerate.to_value(),
            "max-pixels" => settings.max_pixels.to_value(),
            "frame-folder" => settings.frame_folder.to_value(),
            "stats" => {
                drop(settings);
                let queued = self.shared().map(|s| s.lock().queue.len()).unwrap_or(0);
                let s = self.stats();
                let b = gst::Structure::builder("zmqworkersrc-stats")
                    .field("refused", self.curve.refused())
                    .field("frames-in", s.frames_in)
                    .field("frames-out", s.frames_out)
                    .field("jobs", s.jobs)
                    .field(
                        "dropped",
                        s.malformed
                            + s.not_jpeg
                            + s.missing_file
                            + s.refused_path
                            + s.oversize
                            + s.overflow
                            + s.latent.total()
                            + s.kind,
                    )
                    .field("dropped-malformed", s.malformed)
                    .field("dropped-not-jpeg", s.not_jpeg)
                    .field("dropped-missing-file", s.missing_file)
                    .field("dropped-oversize", s.oversize)
                    .field("dropped-refused-path", s.refused_path)
                    .field("dropped-overflow", s.overflow)
                    .field("dropped-kind", s.kind)
                    .field("latents", s.latents);
                let mut st = s
                    .latent
                    .fields(b)
                    .field("sessions", s.sessions)
                    .field("primary-lost", s.primary_lost)
                    .field("drains", s.drains)
                    .field("queued", queued as u64)
                    .build();
                i2i_compat::with_old_fields(&mut st, RENAMED_STATS);
                st.to_value()
            }
            other => unreachable!("no property {other}"),
        }
    }
}

impl GstObjectImpl for ZmqWorkerSrc {}

impl ElementImpl for ZmqWorkerSrc {
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
                "ZeroMQ scale-out worker source",
                "Source/Network",
                "Connects to a zmqdispatchsink, asks for frames when the pipeline has room and \
                 outputs them as image/jpeg buffers, or latents as application/x-i2i-latent \
                 (offset = index, original time as a timestamp/x-unix reference meta); \
                 reconnects by itself when the primary restarts",
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

impl BaseSrcImpl for ZmqWorkerSrc {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        if self.state.lock().unwrap().is_some() {
            // Already started by change_state (zmq_element::start_before_base).
            return Ok(());
        }
        let settings = self.settings.lock().unwrap().clone();
        let endpoint = settings.endpoint.clone();
        self.output.lock().unwrap().reset(settings.framerate);
        let name = settings
            .worker_name
            .clone()
            .unwrap_or_else(default_worker_name);
        let options = zmq_endpoint::Options {
            endpoint: &endpoint,
            bind: false,
            linger_ms: 200,
            send_hwm: None,
            rcv_hwm: None,
            max_message_size: Some(settings.max_message_size),
            name: "DEALER",
            purpose: ", to the primary",
            examples: zmq_endpoint::SCALEOUT_EXAMPLES,
            peer: "peer",
        };
        let (opened, ()) = zmq_element::open(
            zmq::DEALER,
            &options,
            gst::ResourceError::OpenRead,
            self.obj().upcast_ref(),
            &self.curve,
            |_, socket| {
                // A unique identity per run: a restarted worker is a new worker to the primary.
                let identity = format!("{name}#{:x}", scaleout::new_session());
                socket
                    .set_identity(identity.as_bytes())
                    .map_err(|e| ("set the identity of", e))?;
                // Only queue messages on a live connection: stale ready messages are useless.
                socket
                    .set_immediate(true)
                    .map_err(|e| ("set ZMQ_IMMEDIATE on", e))?;
                socket
                    .set_reconnect_ivl(100)
                    .and_then(|()| socket.set_reconnect_ivl_max(1000))
                    .map_err(|e| ("set the reconnect interval on", e))
            },
            |_| false,
        )?;
        let zmq_endpoint::Opened {
            socket,
            context,
            endpoint: connected,
        } = opened;
        *self.last_endpoint.lock().unwrap() = Some(connected);
        gst::info!(CAT, imp = self, "worker {name} connecting to {endpoint}");
        let shared = Shared::new(
            Core {
                queue: VecDeque::new(),
                session: 0,
                taken: 0,
                drain_requested: false,
                stats: Stats::default(),
            },
            (),
        )?;
        let room = u64::from(settings.batch_size) * u64::from(settings.prefetch);
        let io = Io {
            element: self.obj().downgrade(),
            shared: shared.clone(),
            socket,
            _context: context,
            name,
            batch: settings.batch_size,
            room,
            heartbeat: Duration::from_millis(settings.heartbeat_interval_ms.into()),
            primary_timeout: Duration::from_millis(settings.primary_timeout_ms.into()),
            max_message_size: settings.max_message_size,
            max_held: (room as usize) * 4 + 64,
            drop_limit: RateLimit::new(Duration::from_secs(1)),
            max_pixels: settings.max_pixels,
            frame_folder: settings.frame_folder.clone().map(std::path::PathBuf::from),
            framerate: settings.framerate,
            endpoint: endpoint.clone(),
            latent_stream: None,
        };
        let io = SocketThread::spawn("zmqworker-io", shared, move || io.run())?;
        *self.state.lock().unwrap() = Some(State { io });
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        self.curve.stop();
        let state = self.state.lock().unwrap().take();
        if let Some(state) = state {
            *self.last_stats.lock().unwrap() = state.io.shared().lock().stats;
            state.io.stop();
        }
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
                // Frames are timestamped when they are pushed.
                q.set(true, gst::ClockTime::ZERO, gst::ClockTime::NONE);
                true
            }
            _ => BaseSrcImplExt::parent_query(self, query),
        }
    }

    fn unlock(&self) -> Result<(), gst::ErrorMessage> {
        if let Some(shared) = self.shared() {
            shared.unlock();
        }
        Ok(())
    }

    fn unlock_stop(&self) -> Result<(), gst::ErrorMessage> {
        if let Some(shared) = self.shared() {
            shared.unlock_stop();
        }
        Ok(())
    }
}

impl PushSrcImpl for ZmqWorkerSrc {
    fn create(
        &self,
        _buffer: Option<&mut gst::BufferRef>,
    ) -> Result<CreateSuccess, gst::FlowError> {
        let shared = {
            let state = self.state.lock().unwrap();
            let state = state.as_ref().ok_or(gst::FlowError::Flushing)?;
            state.io.shared().clone()
        };
        let item = loop {
            let item = self.next_item(&shared)?;
            let (offered, what) = match &item.kind {
                Kind::Jpeg(size) => (
                    source_output::ensure_caps(&*self.obj(), &self.output, *size)?,
                    "JPEG frame",
                ),
                Kind::Latent(caps) => (
                    source_output::ensure_latent_caps(&*self.obj(), &self.output, caps.clone())?,
                    "latent frame",
                ),
            };
            match offered {
                Offered::Yes => {
                    shared.lock().stats.frames_out += 1;
                    break item;
                }
                Offered::WrongKind(why) => {
                    shared.lock().stats.kind += 1;
                    let text = format!(
                        "Dropped {what} {} from the primary: {why} (counted in stats dropped-kind)",
                        item.index
                    );
                    gst::warning!(CAT, imp = self, "{text}");
                    if let Some(text) = self.kind_limit.lock().unwrap().message(text) {
                        gst::element_imp_warning!(self, gst::StreamError::Format, ("{text}"));
                    }
                }
            }
        };

        let mut buffer = gst::Buffer::from_mut_slice(item.data);
        {
            let b = buffer.get_mut().expect("new buffer is writable");
            let duration = self.output.lock().unwrap().duration();
            let pts = source_output::running_time_now(&*self.obj());
            source_output::stamp(b, item.index, pts, duration, item.timestamp_ms);
        }
        gst::trace!(CAT, imp = self, "frame {}", item.index);
        Ok(CreateSuccess::NewBuffer(buffer))
    }
}
