// SPDX-License-Identifier: MPL-2.0
//! `zmqcollectsrc`: a live source that restores the order of the workers' results.
//!
//! A thread owns the PULL socket (bound, default tcp://*:5558) where the workers'
//! `zmqmsgpacksink socket-type=push` connect, and puts each `[timestamp, index, jpg]` into
//! a reorder buffer ([`crate::scaleout::playout`]). `create()` plays frame `i` at
//! `timestamp_i + playout-delay`: indices strictly increase, the pacing is the source's,
//! frames later than the delay are dropped (`dropped-late`) and frames that never came are
//! skipped (`missing`), both counted in `stats` and reported on the bus at most once a
//! second. The buffer holds at most `max-queue`; `queue-policy` says what a frame that finds
//! it full does: play the oldest early (`played-early`) or drop the oldest or the arriving
//! frame (`dropped-overflow`), reported likewise.
//! Each buffer keeps the frame's original time as a `timestamp/x-unix` reference meta, so
//! a `zmqmsgpacksink` after it publishes the true entry time and `i2i-stats` shows the
//! end-to-end latency. Results in the tensor form `[timestamp, index, payload, meta]`
//! (workers running `i2itransform output=latent`) are checked by [`crate::latent`] and come
//! out as `application/x-i2i-latent`, for an `i2idecode` after the collector.
//!
//! Start: until the first frame of a stream is played, results that come after their
//! play time move the whole schedule back instead of being dropped (`late-start`, see
//! [`crate::scaleout::playout`]); the frames of the stream from the dispatcher's first index
//! that never came are counted as missing.
//!
//! The stream ends (EOS) when the `zmqdispatchsink` of the same `group` in this process
//! has seen the end of its input and the last frame was played or given up, or after
//! `idle-timeout` without results.

use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::base_src::CreateSuccess;
use gst_base::subclass::prelude::*;
use i2i_compat::{Alias, Deprecations};

use super::{CollectLateStart, CollectQueuePolicy};
use crate::latent::{self, LatentDrops, LatentPayload, LatentStream};
use crate::scaleout::ledger::{self, Ledger};
use crate::scaleout::playout::{Arrival, FullPolicy, LateStart, Playout, PlayoutStats};
use crate::scaleout::socket_thread::{self, SocketThread};
use crate::source_output::{self, Offered, SourceOutput};
use crate::unix_time;
use crate::zmq_element;
use i2i_core::curve::ElementCurve;
use i2i_core::jpeg::{DEFAULT_MAX_PIXELS, JpegCheckError, jpeg_size};
use i2i_core::protocol::{self, Payload};
use i2i_core::rate_limit::RateLimit;
use i2i_core::tensor;
use i2i_core::zmq_endpoint;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "zmqcollectsrc",
        gst::DebugColorFlags::empty(),
        Some("Scale-out: results back in order at the source's pace"),
    )
});

/// Renamed properties whose old names still work for one release (docs/properties.md).
pub(crate) const RENAMED: &[Alias] = &[
    Alias {
        old: "bound-endpoint",
        new: "last-endpoint",
    },
    Alias {
        old: "max-frames",
        new: "max-queue",
    },
];

/// Renamed stats fields, (old, new), still filled under the old names for one release.
const RENAMED_STATS: &[(&str, &str)] = &[
    ("received", "frames-in"),
    ("frames", "frames-out"),
    ("late", "dropped-late"),
    ("duplicates", "dropped-duplicate"),
    ("overflow", "played-early"),
    ("discarded", "dropped-restart"),
    ("malformed", "dropped-malformed"),
    ("not-jpeg", "dropped-not-jpeg"),
    ("too-large", "dropped-oversize"),
    ("invalid-latents", "dropped-latent"),
];

const DEFAULT_ENDPOINT: &str = "tcp://*:5558";
const DEFAULT_BIND: bool = true;
const DEFAULT_PLAYOUT_DELAY_MS: u32 = 1000;
const DEFAULT_MAX_FRAMES: u32 = 256;
const DEFAULT_QUEUE_POLICY: CollectQueuePolicy = CollectQueuePolicy::PlayEarly;
const DEFAULT_LATE_START: CollectLateStart = CollectLateStart::Auto;
const DEFAULT_IDLE_TIMEOUT_MS: u32 = 0;
const DEFAULT_GROUP: &str = "i2i";

/// After the input ended, how long past the last frame's play time to wait for it.
const END_GRACE_US: i64 = 200_000;

#[derive(Debug, Clone)]
struct Settings {
    endpoint: String,
    bind: bool,
    playout_delay_ms: u32,
    max_frames: u32,
    queue_policy: CollectQueuePolicy,
    late_start: CollectLateStart,
    idle_timeout_ms: u32,
    group: String,
    max_message_size: i64,
    framerate: gst::Fraction,
    max_pixels: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            endpoint: DEFAULT_ENDPOINT.into(),
            bind: DEFAULT_BIND,
            playout_delay_ms: DEFAULT_PLAYOUT_DELAY_MS,
            max_frames: DEFAULT_MAX_FRAMES,
            queue_policy: DEFAULT_QUEUE_POLICY,
            late_start: DEFAULT_LATE_START,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            group: DEFAULT_GROUP.into(),
            max_message_size: source_output::DEFAULT_MAX_MESSAGE_SIZE,
            framerate: source_output::DEFAULT_FRAMERATE,
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }
}

fn full_policy(p: CollectQueuePolicy) -> FullPolicy {
    match p {
        CollectQueuePolicy::PlayEarly => FullPolicy::PlayEarly,
        CollectQueuePolicy::DropOldest => FullPolicy::DropOldest,
        CollectQueuePolicy::DropNewest => FullPolicy::DropNewest,
    }
}

/// `late-start` resolved: `auto` follows the group's dispatcher (`holds_source`).
fn late_start(p: CollectLateStart, holds_source: Option<bool>) -> LateStart {
    match (p, holds_source) {
        (CollectLateStart::Shift, _) => LateStart::Shift,
        (CollectLateStart::Drop, _) | (CollectLateStart::Auto, Some(false)) => LateStart::Drop,
        (CollectLateStart::Auto, _) => LateStart::Shift,
    }
}

fn policy_nick(p: CollectQueuePolicy) -> &'static str {
    match p {
        CollectQueuePolicy::PlayEarly => "play-early",
        CollectQueuePolicy::DropOldest => "drop-oldest",
        CollectQueuePolicy::DropNewest => "drop-newest",
    }
}

/// Frames lost or played out of time, as last reported on the bus.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Losses {
    late: u64,
    missing: u64,
    dropped: u64,
    overflow: u64,
}

impl Losses {
    fn of(s: &PlayoutStats) -> Losses {
        Losses {
            late: s.late,
            missing: s.missing,
            dropped: s.dropped,
            overflow: s.overflow,
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Stats {
    playout: PlayoutStats,
    malformed: u64,
    not_jpeg: u64,
    too_large: u64,
    invalid_latents: u64,
    latent: LatentDrops,
    dropped_kind: u64,
    held: u64,
}

/// A held result: its JPEG and the frame size from its header, or latents and their caps.
enum Held {
    Jpeg(Vec<u8>, (usize, usize)),
    Latent(Vec<u8>, gst::Caps),
}

struct Core {
    playout: Playout<Held>,
    last_arrival: Instant,
    malformed: u64,
    not_jpeg: u64,
    too_large: u64,
    /// Latent results refused by [`latent::check`] (the warning names the reason): all of
    /// them, and those refused for their size, dtype, shape or meta by reason.
    invalid_latents: u64,
    latent: LatentDrops,
    /// Results of a kind downstream does not take (a JPEG before i2idecode).
    dropped_kind: u64,
    /// What was last reported on the bus.
    reported: Losses,
    /// The start lag last reported (µs).
    reported_start_lag_us: i64,
    late_start: CollectLateStart,
}

impl Core {
    /// Before the first frame of a stream plays: where it starts and what a late result
    /// does, from the group's dispatcher.
    fn prepare_start(&mut self, ledger: &Ledger) {
        if !self.playout.started() {
            self.playout.set_start(ledger.first());
            self.playout
                .set_late_start(late_start(self.late_start, ledger.holds_source()));
        }
    }
}

/// The core, its flags, the condvar and the wake-up, and the group's ledger.
type Shared = socket_thread::Shared<Core, Arc<Ledger>>;

struct State {
    io: SocketThread<Core, Arc<Ledger>>,
    loss_limit: RateLimit,
}

#[derive(Default)]
pub struct ZmqCollectSrc {
    curve: ElementCurve,
    deprecations: Deprecations,
    settings: Mutex<Settings>,
    state: Mutex<Option<State>>,
    bound_endpoint: Mutex<Option<String>>,
    last_stats: Mutex<Stats>,
    output: Mutex<SourceOutput>,
    kind_limit: Mutex<RateLimit>,
}

#[glib::object_subclass]
impl ObjectSubclass for ZmqCollectSrc {
    const NAME: &'static str = "GstZmqCollectSrc";
    type Type = super::ZmqCollectSrc;
    type ParentType = gst_base::PushSrc;
}

/// The thread that owns the PULL socket.
struct Io {
    element: glib::WeakRef<super::ZmqCollectSrc>,
    shared: Arc<Shared>,
    socket: zmq::Socket,
    _context: zmq::Context,
    drop_limit: RateLimit,
    max_pixels: u64,
    framerate: gst::Fraction,
    /// Channels, layout and scaling factor of the first latent results.
    latent_stream: Option<LatentStream>,
}

impl Io {
    fn run(mut self) {
        loop {
            if !self
                .shared
                .poll(&self.socket, Duration::from_millis(200), *CAT)
            {
                break;
            }
            let mut reports = Vec::new();
            loop {
                let msg = match self.socket.recv_msg(zmq::DONTWAIT) {
                    Ok(msg) => msg,
                    Err(zmq::Error::EAGAIN) => break,
                    Err(e) => {
                        gst::warning!(CAT, "receive failed: {e}");
                        break;
                    }
                };
                self.handle(&msg, &mut reports);
            }
            self.shared.cond.notify_all();
            self.post(reports);
        }
        gst::debug!(CAT, "socket thread ends");
    }

    /// A latent result: checked, then held for playout like a JPEG.
    fn handle_latent(&mut self, msg: &[u8], reports: &mut Vec<String>) {
        let checked = latent::check(
            msg,
            self.max_pixels,
            self.framerate,
            &mut self.latent_stream,
        )
        .map(|l| {
            let data = match l.payload {
                LatentPayload::InMessage(p) => p.to_vec(),
                LatentPayload::Converted(v) => v,
            };
            (l.index, l.timestamp_ms, Held::Latent(data, l.caps))
        });
        match checked {
            Ok((index, timestamp_ms, held)) => self.hold(index, timestamp_ms, held),
            Err((why, text)) => {
                {
                    let mut core = self.shared.lock();
                    core.invalid_latents += 1;
                    // By reason too, but for malformed and oversize results.
                    core.latent.count(why);
                }
                self.report(reports, text);
            }
        }
    }

    fn handle(&mut self, msg: &[u8], reports: &mut Vec<String>) {
        if tensor::is_tensor_message(msg) {
            self.handle_latent(msg, reports);
            return;
        }
        let frames = match protocol::decode(msg) {
            Ok(frames) => frames,
            Err(e) => {
                self.shared.lock().malformed += 1;
                self.report(reports, format!("Dropped a malformed result message: {e}"));
                return;
            }
        };
        for f in frames {
            let jpeg = match &f.jpeg {
                Payload::Bytes(b) => match jpeg_size(b, self.max_pixels) {
                    Ok(size) => Held::Jpeg(b.to_vec(), size),
                    Err(text) => {
                        match text {
                            JpegCheckError::NotJpeg(_) => self.shared.lock().not_jpeg += 1,
                            JpegCheckError::TooLarge(_) => self.shared.lock().too_large += 1,
                        }
                        self.report(reports, format!("Dropped result frame {}: {text}", f.index));
                        continue;
                    }
                },
                Payload::Path(p) => {
                    self.shared.lock().malformed += 1;
                    self.report(
                        reports,
                        format!(
                            "Dropped result frame {}: a file path ({p}) instead of JPEG bytes",
                            f.index
                        ),
                    );
                    continue;
                }
            };
            self.hold(f.index, f.timestamp_ms, jpeg);
        }
    }

    /// Puts one checked result into the reorder buffer.
    fn hold(&mut self, index: u64, timestamp_ms: i64, held: Held) {
        let now_us = unix_time::now_us();
        let mut core = self.shared.lock();
        core.last_arrival = Instant::now();
        core.prepare_start(&self.shared.extra);
        match core.playout.insert(index, timestamp_ms, held, now_us) {
            Arrival::Held => self.shared.extra.received(index),
            Arrival::Restarted => {
                gst::info!(
                    CAT,
                    "index went back to {index} with a newer timestamp: new stream"
                );
                self.shared.extra.reset_progress();
                self.shared.extra.received(index);
            }
            Arrival::Late => gst::debug!(CAT, "frame {index} late, dropped"),
            // It came: nothing to send again.
            Arrival::Dropped => {
                gst::debug!(CAT, "frame {index} dropped: reorder buffer full");
                self.shared.extra.received(index);
            }
            Arrival::Duplicate => gst::debug!(CAT, "frame {index} again, dropped"),
        }
    }

    fn report(&mut self, reports: &mut Vec<String>, text: String) {
        if let Some(text) = self.drop_limit.message(text) {
            reports.push(text);
        }
    }

    fn post(&self, reports: Vec<String>) {
        if reports.is_empty() {
            return;
        }
        if let Some(element) = self.element.upgrade() {
            for text in reports {
                gst::element_warning!(element, gst::StreamError::Decode, ("{text}"));
            }
        }
    }
}

impl ZmqCollectSrc {
    fn shared(&self) -> Option<Arc<Shared>> {
        self.state
            .lock()
            .unwrap()
            .as_ref()
            .map(|s| s.io.shared().clone())
    }

    fn stats(&self) -> Stats {
        match self.shared() {
            Some(shared) => {
                let core = shared.lock();
                Stats {
                    playout: core.playout.stats().clone(),
                    malformed: core.malformed,
                    not_jpeg: core.not_jpeg,
                    too_large: core.too_large,
                    invalid_latents: core.invalid_latents,
                    latent: core.latent,
                    dropped_kind: core.dropped_kind,
                    held: core.playout.len() as u64,
                }
            }
            None => self.last_stats.lock().unwrap().clone(),
        }
    }

    fn apply_live_settings(&self) {
        let settings = self.settings.lock().unwrap().clone();
        if let Some(shared) = self.shared() {
            let mut core = shared.lock();
            core.playout
                .set_delay(i64::from(settings.playout_delay_ms) * 1000);
            core.playout.set_max_frames(settings.max_frames as usize);
            core.playout.set_policy(full_policy(settings.queue_policy));
            core.late_start = settings.late_start;
            drop(core);
            shared.cond.notify_all();
        }
    }

    /// Says once per stream that the first results came late and the schedule moved.
    fn report_start_lag(&self, lag_us: i64, delay_us: i64) {
        let text = format!(
            "Output started {} ms late: the first results came after playout-delay ({} ms), as when a worker is still loading its model or waiting for its settings. Every frame now plays {} ms after entry + playout-delay; none was dropped for it (late-start)",
            lag_us / 1000,
            delay_us / 1000,
            lag_us / 1000
        );
        gst::info!(CAT, imp = self, "{text}");
        // gst-launch-1.0 prints the details of an INFO message, not its text: both say it.
        gst::element_imp_info!(self, gst::StreamError::Failed, ("{text}"), ["{text}"]);
    }

    /// Reports frames lost or played early since the last report, at most once a second.
    fn report_losses(&self, now: Losses, reported: Losses) -> Option<Losses> {
        if now == reported {
            return None;
        }
        {
            let mut guard = self.state.lock().unwrap();
            guard.as_mut()?.loss_limit.allow()?;
        }
        let (delay, max_frames, policy) = {
            let s = self.settings.lock().unwrap();
            (s.playout_delay_ms, s.max_frames, s.queue_policy)
        };
        let policy = policy_nick(policy);
        let mut parts = Vec::new();
        if now.missing > reported.missing || now.late > reported.late {
            parts.push(format!(
                "{} more missing (never arrived within playout-delay {delay} ms), {} more late",
                now.missing - reported.missing,
                now.late - reported.late
            ));
        }
        if now.dropped > reported.dropped {
            parts.push(format!(
                "{} more dropped with the reorder buffer full (max-queue {max_frames}, queue-policy {policy})",
                now.dropped - reported.dropped
            ));
        }
        if now.overflow > reported.overflow {
            parts.push(format!(
                "{} more played early with the reorder buffer full (max-queue {max_frames}, queue-policy {policy}; keep max-queue above fps x playout-delay)",
                now.overflow - reported.overflow
            ));
        }
        gst::element_imp_warning!(
            self,
            gst::StreamError::Failed,
            (
                "Frames lost: {}; {} missing, {} late, {} dropped, {} played early in all",
                parts.join("; "),
                now.missing,
                now.late,
                now.dropped,
                now.overflow
            )
        );
        Some(now)
    }
}

impl ObjectImpl for ZmqCollectSrc {
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
                    .blurb("ZeroMQ endpoint of the PULL socket where workers push results (zmqmsgpacksink socket-type=push), e.g. tcp://*:5558")
                    .default_value(Some(DEFAULT_ENDPOINT))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("bind")
                    .nick("Bind")
                    .blurb("Bind the endpoint (workers connect here) instead of connecting to it")
                    .default_value(DEFAULT_BIND)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("last-endpoint")
                    .nick("Last endpoint")
                    .blurb("The endpoint actually bound or connected (with the port ZeroMQ picked for tcp://HOST:*)")
                    .read_only()
                    .build(),
                glib::ParamSpecUInt::builder("playout-delay")
                    .nick("Playout delay")
                    .blurb("Each frame is output this long (ms) after it entered the primary; later frames are dropped and counted. Must cover the slowest worker's time per frame plus its queue")
                    .maximum(600_000)
                    .default_value(DEFAULT_PLAYOUT_DELAY_MS)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("max-queue")
                    .nick("Maximum queue")
                    .blurb("Frames held for reordering, at most (keep it above fps x playout-delay); what happens beyond is queue-policy")
                    .minimum(1)
                    .maximum(100_000)
                    .default_value(DEFAULT_MAX_FRAMES)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("queue-policy", DEFAULT_QUEUE_POLICY)
                    .nick("Queue policy")
                    .blurb("When max-queue frames are held: play-early (the oldest play at once, nothing lost, counted as played-early), drop-newest (drop the arriving frame; a bound below fps x playout-delay then plays that share of the frames) or drop-oldest (drop the next frame to play; for a short excess only, below fps x playout-delay almost nothing plays); the drops keep the pacing and are counted as dropped-overflow")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("late-start", DEFAULT_LATE_START)
                    .nick("Late start")
                    .blurb("Results later than playout-delay before the first frame was played (a worker loading its model or waiting for its settings): shift (move every play time back by that lateness plus a quarter of the delay, once: nothing lost; stats start-lag-ms), drop (drop them as late) or auto (shift when the zmqdispatchsink of the group uses queue-policy=block or is not in this process, drop when it drops frames)")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("idle-timeout")
                    .nick("Idle timeout")
                    .blurb("End the stream after this long (ms) without results (0 = never; with a zmqdispatchsink of the same group in this process the stream also ends after the input's last frame)")
                    .default_value(DEFAULT_IDLE_TIMEOUT_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("group")
                    .nick("Group")
                    .blurb("Name shared with the zmqdispatchsink in this process (see its group property)")
                    .default_value(Some(DEFAULT_GROUP))
                    .mutable_ready()
                    .build(),
                source_output::max_message_size_pspec("result message"),
                source_output::framerate_pspec(),
                source_output::max_pixels_pspec(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("frames-in (results received), frames-out, dropped (sum of dropped-late: later than playout-delay, dropped-duplicate, dropped-overflow: buffer full, dropped-restart: held when the source restarted its count, dropped-malformed, dropped-not-jpeg, dropped-oversize: over max-pixels, dropped-latent: latent results refused, all reasons, dropped-kind: results of a kind downstream does not take, a JPEG before i2idecode), missing (from the dispatcher's first index when it is in this process), played-early (buffer full, play-early), restarts, start-lag-ms (how far late-start=shift moved the schedule), refused (CURVE peers), held, dropped-latent-size, dropped-latent-dtype, dropped-latent-shape, dropped-latent-meta (of dropped-latent: payload length, dtype, shape, meta refused; see zmqmsgpacksrc)")
                    .read_only()
                    .build(),
            ];
            v.extend(ElementCurve::param_specs("workers"));
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
            "bind" => settings.bind = value.get().expect("type checked upstream"),
            "playout-delay" => {
                settings.playout_delay_ms = value.get().expect("type checked upstream")
            }
            "max-queue" => settings.max_frames = value.get().expect("type checked upstream"),
            "queue-policy" => settings.queue_policy = value.get().expect("type checked upstream"),
            "late-start" => settings.late_start = value.get().expect("type checked upstream"),
            "idle-timeout" => {
                settings.idle_timeout_ms = value.get().expect("type checked upstream")
            }
            "group" => {
                settings.group = value
                    .get::<Option<String>>()
                    .expect("type checked upstream")
                    .unwrap_or_else(|| DEFAULT_GROUP.into())
            }
            "max-message-size" => {
                settings.max_message_size = value.get().expect("type checked upstream")
            }
            "framerate" => settings.framerate = value.get().expect("type checked upstream"),
            "max-pixels" => settings.max_pixels = value.get().expect("type checked upstream"),
            other => unreachable!("no writable property {other}"),
        }
        drop(settings);
        if matches!(
            name,
            "playout-delay" | "max-queue" | "queue-policy" | "late-start"
        ) {
            self.apply_live_settings();
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
            "bind" => settings.bind.to_value(),
            "last-endpoint" => self.bound_endpoint.lock().unwrap().to_value(),
            "playout-delay" => settings.playout_delay_ms.to_value(),
            "max-queue" => settings.max_frames.to_value(),
            "queue-policy" => settings.queue_policy.to_value(),
            "late-start" => settings.late_start.to_value(),
            "idle-timeout" => settings.idle_timeout_ms.to_value(),
            "group" => settings.group.to_value(),
            "max-message-size" => settings.max_message_size.to_value(),
            "framerate" => settings.framerate.to_value(),
            "max-pixels" => settings.max_pixels.to_value(),
            "stats" => {
                drop(settings);
                let s = self.stats();
                let p = &s.playout;
                let dropped = p.late
                    + p.duplicates
                    + p.dropped
                    + p.discarded
                    + s.malformed
                    + s.not_jpeg
                    + s.too_large
                    + s.invalid_latents
                    + s.dropped_kind;
                let b = gst::Structure::builder("zmqcollectsrc-stats")
                    .field("frames-in", p.received)
                    .field("frames-out", p.released)
                    .field("dropped", dropped)
                    .field("dropped-late", p.late)
                    .field("dropped-duplicate", p.duplicates)
                    .field("missing", p.missing)
                    .field("played-early", p.overflow)
                    .field("dropped-overflow", p.dropped)
                    .field("restarts", p.restarts)
                    .field("dropped-restart", p.discarded)
                    .field("start-lag-ms", (p.start_lag_us / 1000) as u64)
                    .field("refused", self.curve.refused())
                    .field("dropped-malformed", s.malformed)
                    .field("dropped-not-jpeg", s.not_jpeg)
                    .field("dropped-oversize", s.too_large)
                    .field("dropped-latent", s.invalid_latents)
                    .field("dropped-kind", s.dropped_kind)
                    .field("held", s.held);
                let mut st = s.latent.fields(b).build();
                i2i_compat::with_old_fields(&mut st, RENAMED_STATS);
                st.to_value()
            }
            other => unreachable!("no property {other}"),
        }
    }
}

impl GstObjectImpl for ZmqCollectSrc {}

impl ElementImpl for ZmqCollectSrc {
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
                "ZeroMQ scale-out collector",
                "Source/Network",
                "Receives the workers' [timestamp, index, jpg] results or latents (PULL), \
                 restores index order with a fixed playout delay and outputs image/jpeg or \
                 application/x-i2i-latent at the source's pace, \
                 dropping and counting frames later than the delay; keeps each frame's original \
                 timestamp as a timestamp/x-unix reference meta",
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

impl BaseSrcImpl for ZmqCollectSrc {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        if self.state.lock().unwrap().is_some() {
            // Already started by change_state (zmq_element::start_before_base).
            return Ok(());
        }
        let settings = self.settings.lock().unwrap().clone();
        let endpoint = settings.endpoint.clone();
        self.output.lock().unwrap().reset(settings.framerate);
        let options = zmq_endpoint::Options {
            endpoint: &endpoint,
            bind: settings.bind,
            linger_ms: 0,
            send_hwm: None,
            rcv_hwm: None,
            max_message_size: Some(settings.max_message_size),
            name: "PULL",
            purpose: ", for the workers' results",
            examples: zmq_endpoint::SCALEOUT_EXAMPLES,
            peer: "worker",
        };
        let (opened, ()) = zmq_element::open(
            zmq::PULL,
            &options,
            gst::ResourceError::OpenRead,
            self.obj().upcast_ref(),
            &self.curve,
            |_, _| Ok(()),
            |_| false,
        )?;
        let zmq_endpoint::Opened {
            socket,
            context,
            endpoint: bound,
        } = opened;
        gst::info!(CAT, imp = self, "workers push results to {bound}");
        *self.bound_endpoint.lock().unwrap() = Some(bound);
        let ledger = ledger::ledger(&settings.group);
        ledger.attach_collector();
        let shared = Shared::new(
            Core {
                playout: Playout::new(
                    i64::from(settings.playout_delay_ms) * 1000,
                    settings.max_frames as usize,
                    full_policy(settings.queue_policy),
                ),
                last_arrival: Instant::now(),
                malformed: 0,
                not_jpeg: 0,
                too_large: 0,
                invalid_latents: 0,
                latent: LatentDrops::default(),
                dropped_kind: 0,
                reported: Losses::default(),
                reported_start_lag_us: 0,
                late_start: settings.late_start,
            },
            ledger,
        )
        .inspect_err(|_| shared_detach(&settings.group))?;
        let io = Io {
            element: self.obj().downgrade(),
            shared: shared.clone(),
            socket,
            _context: context,
            drop_limit: RateLimit::new(Duration::from_secs(1)),
            max_pixels: settings.max_pixels,
            framerate: settings.framerate,
            latent_stream: None,
        };
        let io = SocketThread::spawn("zmqcollect-io", shared, move || io.run())
            .inspect_err(|_| shared_detach(&settings.group))?;
        *self.state.lock().unwrap() = Some(State {
            io,
            loss_limit: RateLimit::new(Duration::from_secs(1)),
        });
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        self.curve.stop();
        let stats = self.stats();
        let state = self.state.lock().unwrap().take();
        if let Some(state) = state {
            state.io.stop().extra.detach_collector();
            *self.last_stats.lock().unwrap() = stats;
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
                // Buffers are timestamped when they are pushed, at their play time.
                q.set(true, gst::ClockTime::ZERO, gst::ClockTime::NONE);
                true
            }
            _ => BaseSrcImplExt::parent_query(self, query),
        }
    }

    fn event(&self, event: &gst::Event) -> bool {
        if let gst::EventView::FlushStop(_) = event.view()
            && let Some(shared) = self.shared()
        {
            shared.lock().playout.clear();
            shared.extra.reset_progress();
        }
        self.parent_event(event)
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

fn shared_detach(group: &str) {
    ledger::ledger(group).detach_collector();
}

impl PushSrcImpl for ZmqCollectSrc {
    fn create(
        &self,
        _buffer: Option<&mut gst::BufferRef>,
    ) -> Result<CreateSuccess, gst::FlowError> {
        let shared = {
            let state = self.state.lock().unwrap();
            let state = state.as_ref().ok_or(gst::FlowError::Flushing)?;
            state.io.shared().clone()
        };
        loop {
            let (idle_timeout, delay_us) = {
                let s = self.settings.lock().unwrap();
                (
                    Duration::from_millis(s.idle_timeout_ms.into()),
                    i64::from(s.playout_delay_ms) * 1000,
                )
            };
            let released = {
                let mut core = shared.lock();
                loop {
                    if core.flushing {
                        return Err(gst::FlowError::Flushing);
                    }
                    let now_us = unix_time::now_us();
                    if let Some(r) = core.playout.pop_due(now_us) {
                        if r.skipped > 0 {
                            shared.extra.skipped(r.index - r.skipped..r.index);
                        }
                        shared.extra.advanced(r.index + 1);
                        break r;
                    }
                    if let Some(end) = shared.extra.end() {
                        core.prepare_start(&shared.extra);
                        match end.last {
                            None if core.playout.is_empty() => return Err(gst::FlowError::Eos),
                            None => {}
                            Some((last, timestamp_ms)) => {
                                if core.playout.next_index().is_some_and(|n| n > last) {
                                    gst::info!(
                                        CAT,
                                        imp = self,
                                        "last frame {last} played: end of stream"
                                    );
                                    return Err(gst::FlowError::Eos);
                                }
                                if core.playout.is_empty()
                                    && now_us
                                        > core.playout.play_time_us(timestamp_ms) + END_GRACE_US
                                {
                                    let skipped = core.playout.skip_through(last);
                                    shared.extra.skipped(last + 1 - skipped..last + 1);
                                    gst::info!(
                                        CAT,
                                        imp = self,
                                        "input ended at frame {last}, {skipped} final frames missing: end of stream"
                                    );
                                    return Err(gst::FlowError::Eos);
                                }
                            }
                        }
                    }
                    if !idle_timeout.is_zero()
                        && core.playout.is_empty()
                        && core.last_arrival.elapsed() > idle_timeout
                    {
                        gst::info!(
                            CAT,
                            imp = self,
                            "no results for {idle_timeout:?}: end of stream"
                        );
                        return Err(gst::FlowError::Eos);
                    }
                    let wait_us = core
                        .playout
                        .next_due(now_us)
                        .map(|due| (due - now_us).clamp(0, 100_000))
                        .unwrap_or(100_000);
                    core = shared.wait_timeout(core, Duration::from_micros(wait_us as u64));
                }
            };
            let (losses, reported, start_lag_us) = {
                let mut core = shared.lock();
                let lag = core.playout.stats().start_lag_us;
                let new_lag = (lag != core.reported_start_lag_us).then_some(lag);
                core.reported_start_lag_us = lag;
                (Losses::of(core.playout.stats()), core.reported, new_lag)
            };
            if let Some(lag) = start_lag_us.filter(|l| *l > 0) {
                self.report_start_lag(lag, delay_us);
            }
            if let Some(now_reported) = self.report_losses(losses, reported) {
                shared.lock().reported = now_reported;
            }
            if released.skipped > 0 {
                gst::debug!(
                    CAT,
                    imp = self,
                    "skipped {} missing frames before {}",
                    released.skipped,
                    released.index
                );
            }

            let (offered, data, what) = match released.payload {
                Held::Jpeg(jpeg, size) => (
                    source_output::ensure_caps(&*self.obj(), &self.output, size)?,
                    jpeg,
                    "JPEG result",
                ),
                Held::Latent(data, caps) => (
                    source_output::ensure_latent_caps(&*self.obj(), &self.output, caps)?,
                    data,
                    "latent result",
                ),
            };
            if let Offered::WrongKind(why) = offered {
                shared.lock().dropped_kind += 1;
                let text = format!(
                    "Dropped {what} {}: {why} (counted in stats dropped-kind)",
                    released.index
                );
                gst::warning!(CAT, imp = self, "{text}");
                if let Some(text) = self.kind_limit.lock().unwrap().message(text) {
                    gst::element_imp_warning!(self, gst::StreamError::Format, ("{text}"));
                }
                continue;
            }
            let mut buffer = gst::Buffer::from_mut_slice(data);
            {
                let b = buffer.get_mut().expect("new buffer is writable");
                let duration = self.output.lock().unwrap().duration();
                let pts = source_output::running_time_now(&*self.obj());
                source_output::stamp(b, released.index, pts, duration, released.timestamp_ms);
            }
            return Ok(CreateSuccess::NewBuffer(buffer));
        }
    }
}
