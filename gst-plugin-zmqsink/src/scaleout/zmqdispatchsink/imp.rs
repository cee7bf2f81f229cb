// SPDX-License-Identifier: MPL-2.0
//! `zmqdispatchsink`: hands `image/jpeg` frames, or latents (`application/x-i2i-latent`,
//! from `i2itransform output=latent`), to workers over a ZeroMQ ROUTER socket.
//!
//! JPEG frames go in the JPEG job forms ([`crate::scaleout::wire`]), unchanged. Each
//! latent frame is packed in `render()` into the transport's tensor form `[timestamp,
//! index, payload, meta]` ([`crate::latent`]; float32, or float16 with
//! `latent-dtype=f16`), and a job of latents is one such message per frame. A latent
//! buffer whose size does not match its caps is dropped before it takes an index,
//! counted in `stats` (`dropped-invalid`) and reported (rate-limited); the stream goes on.
//!
//! `render()` puts each frame into a bounded queue (policy: block or drop-oldest); a
//! thread that owns the socket receives the workers' ready messages and sends each worker
//! as many frames as it asked for, the worker that has waited longest first (see
//! [`crate::scaleout::dispatch`]). The thread also sends heartbeats, which tell workers the
//! session and, through ZMQ_ROUTER_MANDATORY, find a killed worker within one interval.
//! A worker that is lost or leaves gives its untaken frames back to the queue; with a
//! `zmqcollectsrc` of the same `group` in this process, also the frames it had taken and
//! that did not arrive.
//!
//! Each frame carries its index (a count from 0, or the index upstream set, with
//! `keep-index`) and its entry time: the `timestamp/x-unix` reference meta when the
//! buffer has one, else the time this element took it in.
//!
//! With `queue-policy=block` nothing is taken in before the first worker joined: a frame
//! queued then would be older than the collector's playout delay by the time a worker
//! could process it, and be dropped there as late. `render()` holds the stream instead.
//!
//! Frames without timestamps (`multifilesrc`) are paced by the caps' frame rate when `sync`
//! is on: one frame per frame duration, the first when the first worker is there, and
//! never faster to catch up after a wait; so their entry times, and the collector's output,
//! keep the files' pace from the start.
//! An application's EOS request (the first Ctrl-C of `gst-launch-1.0 -e`) reaches the
//! sink directly ([`crate::eos_request`]): a frame that cannot be queued within its grace,
//! and at EOS the queue when no worker is there to take it, are given up and counted in
//! `dropped-undelivered`.

use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;
use i2i_compat::{Alias, Deprecations};

use super::DispatchQueuePolicy;
use crate::eos_request::{self, EosRequest};
use crate::frame_index;
use crate::latent;
use crate::scaleout;
use crate::scaleout::dispatch::{Departure, Frame, Job, QueuePolicy, Removed, Reply, Scheduler};
use crate::scaleout::ledger::{self, End, Ledger};
use crate::scaleout::socket_thread::{self, SocketThread};
use crate::scaleout::wire::{self, JobFrame, WorkerMsg};
use crate::source_output;
use crate::transport::zmqmsgpacksink::LatentDtype;
use crate::unix_time;
use crate::zmq_element;
use i2i_core::curve::ElementCurve;
use i2i_core::rate_limit::RateLimit;
use i2i_core::tensor::{LATENT_CAPS_NAME, TensorMeta};
use i2i_core::zmq_endpoint;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "zmqdispatchsink",
        gst::DebugColorFlags::empty(),
        Some("Scale-out: frames to the next free worker"),
    )
});

/// Renamed properties whose old names still work for one release (docs/properties.md).
pub(crate) const RENAMED: &[Alias] = &[Alias {
    old: "bound-endpoint",
    new: "last-endpoint",
}];

/// Renamed stats fields, (old, new), still filled under the old names for one release.
const RENAMED_STATS: &[(&str, &str)] = &[
    ("undelivered", "dropped-undelivered"),
    ("invalid", "dropped-invalid"),
];

const DEFAULT_ENDPOINT: &str = "tcp://*:5555";
const DEFAULT_MAX_QUEUE: u32 = 16;
const DEFAULT_QUEUE_POLICY: DispatchQueuePolicy = DispatchQueuePolicy::Block;
const DEFAULT_WORKER_TIMEOUT_MS: u32 = 3000;
const DEFAULT_HEARTBEAT_INTERVAL_MS: u32 = 100;
const DEFAULT_GROUP: &str = "i2i";
const DEFAULT_KEEP_INDEX: bool = false;
const DEFAULT_LATENT_DTYPE: LatentDtype = LatentDtype::F32;

#[derive(Debug, Clone)]
struct Settings {
    endpoint: String,
    max_queue: u32,
    queue_policy: DispatchQueuePolicy,
    worker_timeout_ms: u32,
    heartbeat_interval_ms: u32,
    group: String,
    keep_index: bool,
    latent_dtype: LatentDtype,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            endpoint: DEFAULT_ENDPOINT.into(),
            max_queue: DEFAULT_MAX_QUEUE,
            queue_policy: DEFAULT_QUEUE_POLICY,
            worker_timeout_ms: DEFAULT_WORKER_TIMEOUT_MS,
            heartbeat_interval_ms: DEFAULT_HEARTBEAT_INTERVAL_MS,
            group: DEFAULT_GROUP.into(),
            keep_index: DEFAULT_KEEP_INDEX,
            latent_dtype: DEFAULT_LATENT_DTYPE,
        }
    }
}

fn policy(p: DispatchQueuePolicy) -> QueuePolicy {
    match p {
        DispatchQueuePolicy::Block => QueuePolicy::Block,
        DispatchQueuePolicy::DropOldest => QueuePolicy::DropOldest,
    }
}

/// A queued frame: the JPEG buffer as it came, or latents already packed as one tensor
/// message.
#[derive(Clone)]
enum Payload {
    Jpeg(gst::Buffer),
    Tensor(Arc<Vec<u8>>),
}

struct Core {
    sched: Scheduler<Payload>,
    /// The input ended: tell the workers to finish their frames.
    drain_requested: bool,
    count: u64,
    last: Option<(u64, i64)>,
    /// When the queue last got shorter (for the wait at EOS).
    last_progress: Instant,
    malformed: u64,
    /// Frames given up after the application asked to end.
    undelivered: u64,
    /// Latent buffers whose size does not match their caps, dropped.
    invalid: u64,
    /// When the last untimestamped frame was taken in, on the frame-rate schedule.
    paced_at: Option<Instant>,
}

/// The core, its flags, the condvar and the wake-up, and the group's ledger.
type Shared = socket_thread::Shared<Core, Arc<Ledger>>;

struct State {
    io: SocketThread<Core, Arc<Ledger>>,
}

#[derive(Default)]
pub struct ZmqDispatchSink {
    curve: ElementCurve,
    deprecations: Deprecations,
    settings: Mutex<Settings>,
    state: Mutex<Option<State>>,
    bound_endpoint: Mutex<Option<String>>,
    /// The stats of the last run, kept after stop.
    last_stats: Mutex<Option<gst::Structure>>,
    eos_request: EosRequest,
    undelivered_limit: Mutex<RateLimit>,
    /// The latent caps' meta (float32 NCHW); `None` for JPEG input.
    latent_input: Mutex<Option<TensorMeta>>,
    /// One frame's duration at the caps' frame rate (pacing of untimestamped frames).
    frame_duration: Mutex<Option<Duration>>,
    invalid_limit: Mutex<RateLimit>,
}

#[glib::object_subclass]
impl ObjectSubclass for ZmqDispatchSink {
    const NAME: &'static str = "GstZmqDispatchSink";
    type Type = super::ZmqDispatchSink;
    type ParentType = gst_base::BaseSink;
}

fn stats_structure(core: &Core, now: Instant) -> gst::Structure {
    let s = core.sched.stats();
    let workers = core.sched.workers(now);
    let list = gst::Array::new(workers.iter().map(|w| {
        gst::Structure::builder("worker")
            .field("name", &w.name)
            .field("batch", w.batch)
            .field("frames", w.frames)
            .field("in-flight", w.in_flight)
            .field("credit", w.credit)
            .field("idle-ms", w.idle_ms)
            .field("unreturned", w.unreturned)
            .build()
            .to_send_value()
    }));
    let mut st = gst::Structure::builder("zmqdispatchsink-stats")
        .field("queued", s.queued)
        .field("dispatched", s.dispatched)
        .field("jobs", s.jobs)
        .field("dropped", s.dropped + core.undelivered + core.invalid)
        .field("dropped-overflow", s.dropped)
        .field("redispatched", s.redispatched)
        .field("unaccounted", s.unaccounted)
        .field("unreturned", s.unreturned)
        .field("queue-length", core.sched.queue_len() as u64)
        .field("in-flight", core.sched.in_flight())
        .field("workers", workers.len() as u64)
        .field("workers-joined", s.workers_joined)
        .field("workers-left", s.workers_left)
        .field("workers-lost", s.workers_lost)
        .field("malformed", core.malformed)
        .field("dropped-undelivered", core.undelivered)
        .field("dropped-invalid", core.invalid)
        .field("worker-list", list)
        .build();
    i2i_compat::with_old_fields(&mut st, RENAMED_STATS);
    st
}

/// Sorted indices as ranges: `1-7, 9`.
fn ranges(indices: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < indices.len() {
        let mut j = i;
        while j + 1 < indices.len() && indices[j + 1] == indices[j] + 1 {
            j += 1;
        }
        out.push(if j > i {
            format!("{}-{}", indices[i], indices[j])
        } else {
            indices[i].to_string()
        });
        i = j + 1;
    }
    out.join(", ")
}

/// What the socket thread reports on the bus.
enum Report {
    Joined(String),
    Removed(Removed),
    Malformed(String),
    /// A worker's frames that the collector played past without them.
    Unreturned(String, Vec<u64>),
}

/// The thread that owns the ROUTER socket.
struct Io {
    element: glib::WeakRef<super::ZmqDispatchSink>,
    shared: Arc<Shared>,
    socket: zmq::Socket,
    _context: zmq::Context,
    heartbeat: Duration,
    malformed_limit: RateLimit,
    unreturned_limit: std::cell::RefCell<RateLimit>,
}

impl Io {
    fn is_done_fn(&self) -> impl Fn(u64) -> bool + '_ {
        let ledger = &self.shared.extra;
        let attached = ledger.has_collector();
        move |i| attached && ledger.is_done(i)
    }

    fn run(mut self) {
        let mut next_heartbeat = Instant::now();
        loop {
            let timeout = next_heartbeat.saturating_duration_since(Instant::now());
            if !self.shared.poll(&self.socket, timeout, *CAT) {
                break;
            }
            let mut reports = Vec::new();
            self.receive(&mut reports);
            let now = Instant::now();
            if now >= next_heartbeat {
                next_heartbeat = now + self.heartbeat;
                self.heartbeats(now, &mut reports);
            }
            self.dispatch(&mut reports);
            self.shared.cond.notify_all();
            self.post(reports);
        }
        gst::debug!(CAT, "socket thread ends");
    }

    fn receive(&mut self, reports: &mut Vec<Report>) {
        loop {
            let parts = match self.socket.recv_multipart(zmq::DONTWAIT) {
                Ok(parts) => parts,
                Err(zmq::Error::EAGAIN) => return,
                Err(e) => {
                    gst::warning!(CAT, "receive failed: {e}");
                    return;
                }
            };
            let Some((id, rest)) = parts.split_first() else {
                continue;
            };
            let now = Instant::now();
            match wire::decode_worker(rest) {
                Ok(WorkerMsg::Ready(ready)) => {
                    let is_done = self.is_done_fn();
                    let mut core = self.shared.lock();
                    let was_in = core.sched.worker_name(id).is_some_and(|(_, s)| s);
                    let reply = core.sched.on_ready(id, &ready, now, &is_done);
                    let is_in = core.sched.worker_name(id).is_some_and(|(_, s)| s);
                    if is_in && !was_in {
                        reports.push(Report::Joined(ready.name.clone()));
                    }
                    drop(core);
                    if reply == Reply::Heartbeat {
                        let session = self.shared.lock().sched.session();
                        self.send_control(id, &wire::encode_heartbeat(session), reports);
                    }
                }
                Ok(WorkerMsg::Bye) => {
                    let is_done = self.is_done_fn();
                    if let Some(r) = self.shared.lock().sched.on_bye(id, &is_done) {
                        reports.push(Report::Removed(r));
                    }
                }
                Err(e) => {
                    self.shared.lock().malformed += 1;
                    if let Some(text) = self
                        .malformed_limit
                        .message(format!("{e} (from peer {})", String::from_utf8_lossy(id)))
                    {
                        reports.push(Report::Malformed(text));
                    }
                }
            }
        }
    }

    /// Sends a control message; a worker found unreachable is removed.
    fn send_control(&self, id: &[u8], parts: &[Vec<u8>], reports: &mut Vec<Report>) {
        let msg = [id.to_vec(), parts[0].clone()]
            .into_iter()
            .chain(parts[1..].iter().cloned());
        match self.socket.send_multipart(msg, zmq::DONTWAIT) {
            Ok(()) | Err(zmq::Error::EAGAIN) => {}
            Err(zmq::Error::EHOSTUNREACH) => {
                let is_done = self.is_done_fn();
                if let Some(r) =
                    self.shared
                        .lock()
                        .sched
                        .remove(id, Departure::Unreachable, &is_done)
                {
                    reports.push(Report::Removed(r));
                }
            }
            Err(e) => gst::warning!(CAT, "send to a worker failed: {e}"),
        }
    }

    fn heartbeats(&self, now: Instant, reports: &mut Vec<Report>) {
        let is_done = self.is_done_fn();
        let (session, ids, drain) = {
            let mut core = self.shared.lock();
            core.sched
                .set_track_taken(self.shared.extra.has_collector());
            let skipped = self.shared.extra.take_skipped();
            for (name, frames) in core.sched.prune(&is_done, &|i| skipped.contains(&i)) {
                reports.push(Report::Unreturned(name, frames));
            }
            for r in core.sched.expire(now, &is_done) {
                reports.push(Report::Removed(r));
            }
            let ids: Vec<Vec<u8>> = core.sched.worker_ids().map(|i| i.to_vec()).collect();
            let drain = std::mem::take(&mut core.drain_requested);
            (core.sched.session(), ids, drain)
        };
        let hb = wire::encode_heartbeat(session);
        for id in &ids {
            self.send_control(id, &hb, reports);
        }
        if drain {
            let msg = wire::encode_drain(session);
            for id in &ids {
                self.send_control(id, &msg, reports);
            }
        }
    }

    fn dispatch(&self, reports: &mut Vec<Report>) {
        loop {
            let now = Instant::now();
            let job = {
                let mut core = self.shared.lock();
                let len = core.sched.queue_len();
                let job = core.sched.next_job(now);
                if core.sched.queue_len() < len {
                    core.last_progress = now;
                }
                job
            };
            let Some(job) = job else { return };
            match self.send_job(&job) {
                Ok(()) => {
                    gst::trace!(
                        CAT,
                        "sent frames {:?} to {}",
                        job.frames.iter().map(|f| f.index).collect::<Vec<_>>(),
                        String::from_utf8_lossy(&job.worker)
                    );
                }
                Err(e) => {
                    let unreachable = e == zmq::Error::EHOSTUNREACH;
                    if !unreachable && e != zmq::Error::EAGAIN {
                        gst::warning!(CAT, "sending a job failed: {e}");
                    }
                    let is_done = self.is_done_fn();
                    let removed =
                        self.shared
                            .lock()
                            .sched
                            .job_failed(job, unreachable, now, &is_done);
                    if let Some(r) = removed {
                        reports.push(Report::Removed(r));
                    }
                }
            }
        }
    }

    /// Sends a job: JPEG frames in the JPEG forms, latents as one tensor message per frame
    /// (a job holds one kind; were a batch to straddle a caps change, each kind goes as its
    /// own message).
    fn send_job(&self, job: &Job<Payload>) -> Result<(), zmq::Error> {
        let tensors = job.frames.iter().filter_map(|f| match &f.payload {
            Payload::Tensor(msg) => Some(msg.as_slice()),
            Payload::Jpeg(_) => None,
        });
        let parts = wire::latent_job_parts(tensors);
        if parts.len() > 1 {
            let all = std::iter::once(job.worker.as_slice()).chain(parts);
            self.socket.send_multipart(all, zmq::DONTWAIT)?;
        }
        let maps: Vec<_> = job
            .frames
            .iter()
            .filter_map(|f| match &f.payload {
                Payload::Jpeg(b) => b.map_readable().ok().map(|m| (f, m)),
                Payload::Tensor(_) => None,
            })
            .collect();
        if maps.is_empty() {
            return Ok(());
        }
        let frames: Vec<JobFrame<'_>> = maps
            .iter()
            .map(|(f, m)| JobFrame {
                index: f.index,
                timestamp_ms: f.timestamp_ms,
                jpeg: m.as_slice(),
            })
            .collect();
        let body = wire::encode_job(&frames);
        self.socket.send_multipart(
            [job.worker.clone(), wire::KIND_JOB.to_vec(), body],
            zmq::DONTWAIT,
        )
    }

    fn post(&self, reports: Vec<Report>) {
        if reports.is_empty() {
            return;
        }
        let Some(element) = self.element.upgrade() else {
            return;
        };
        for r in reports {
            let workers = self.shared.lock().sched.worker_count() as u64;
            match r {
                Report::Joined(name) => {
                    gst::info!(CAT, obj = element, "worker {name} joined ({workers} now)");
                    let s = gst::Structure::builder("zmqdispatchsink-worker")
                        .field("event", "joined")
                        .field("name", &name)
                        .field("workers", workers)
                        .build();
                    let _ = element
                        .post_message(gst::message::Element::builder(s).src(&element).build());
                }
                Report::Removed(r) => {
                    let event = match r.why {
                        Departure::Left => "left",
                        Departure::TimedOut | Departure::Unreachable => "lost",
                    };
                    let s = gst::Structure::builder("zmqdispatchsink-worker")
                        .field("event", event)
                        .field("name", &r.name)
                        .field("redispatched", r.redispatched)
                        .field("unaccounted", r.unaccounted)
                        .field("workers", workers)
                        .build();
                    let _ = element
                        .post_message(gst::message::Element::builder(s).src(&element).build());
                    match r.why {
                        Departure::Left => gst::info!(
                            CAT,
                            obj = element,
                            "worker {} left ({workers} now), {} untaken frames sent to others",
                            r.name,
                            r.redispatched
                        ),
                        Departure::TimedOut | Departure::Unreachable => {
                            let how = if r.why == Departure::TimedOut {
                                "silent for longer than worker-timeout"
                            } else {
                                "its connection closed"
                            };
                            gst::element_warning!(
                                element,
                                gst::ResourceError::Read,
                                (
                                    "Worker {} lost ({how}); {} of its frames sent to other workers, {} unaccounted; {workers} workers left",
                                    r.name,
                                    r.redispatched,
                                    r.unaccounted
                                )
                            );
                        }
                    }
                }
                Report::Malformed(text) => {
                    gst::element_warning!(
                        element,
                        gst::StreamError::Decode,
                        ("Dropped a malformed message on the worker socket: {text}")
                    );
                }
                Report::Unreturned(name, frames) => {
                    let text = format!(
                        "Worker {name} did not return {} frames in time ({}): its pipeline dropped them (an i2itransform with drop-frames=auto drops on this live source: set drop-frames=never, as pipelines/worker.sh does; the primary's queue-policy decides what to drop) or it is slower than the collector's playout-delay (then they are also counted late there)",
                        frames.len(),
                        ranges(&frames)
                    );
                    if let Some(text) = self.unreturned_limit.borrow_mut().message(text) {
                        gst::element_warning!(element, gst::StreamError::Failed, ("{text}"));
                    }
                }
            }
        }
    }
}

impl ZmqDispatchSink {
    fn shared(&self) -> Option<Arc<Shared>> {
        self.state
            .lock()
            .unwrap()
            .as_ref()
            .map(|s| s.io.shared().clone())
    }

    fn apply_live_settings(&self) {
        let settings = self.settings.lock().unwrap().clone();
        if let Some(shared) = self.shared() {
            let mut core = shared.lock();
            core.sched
                .set_policy(policy(settings.queue_policy), settings.max_queue as usize);
            core.sched
                .set_worker_timeout(Duration::from_millis(settings.worker_timeout_ms.into()));
            shared
                .extra
                .set_holds_source(Some(settings.queue_policy == DispatchQueuePolicy::Block));
            drop(core);
            shared.cond.notify_all();
        }
    }

    /// At EOS: waits until every queued frame went to a worker, as long as workers take
    /// them (progress within `worker-timeout`).
    fn wait_until_dispatched(&self, shared: &Shared) {
        let timeout = Duration::from_millis(self.settings.lock().unwrap().worker_timeout_ms.into());
        let mut core = shared.lock();
        loop {
            if core.flushing || core.sched.queue_len() == 0 {
                break;
            }
            if self.eos_request.give_up() && core.sched.worker_count() == 0 {
                let left = core.sched.queue_len() as u64;
                core.sched.clear_queue();
                core.undelivered += left;
                drop(core);
                self.warn_undelivered(left, "were still queued");
                return;
            }
            if core.last_progress.elapsed() > timeout {
                let left = core.sched.queue_len();
                core.sched.clear_queue();
                drop(core);
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::Write,
                    (
                        "End of stream: {left} frames never reached a worker (none taken for worker-timeout, {} ms); dropped",
                        timeout.as_millis()
                    )
                );
                return;
            }
            core = shared.wait_timeout(core, Duration::from_millis(50));
        }
    }
}

impl ZmqDispatchSink {
    /// Holds an untimestamped frame until one `duration` after the previous one; a frame
    /// already behind that schedule goes at once and starts it afresh (no catching up).
    fn wait_for_pace<'a>(
        &self,
        shared: &'a Shared,
        mut core: std::sync::MutexGuard<'a, socket_thread::Flagged<Core>>,
        duration: Duration,
    ) -> Result<std::sync::MutexGuard<'a, socket_thread::Flagged<Core>>, gst::FlowError> {
        if let Some(due) = core.paced_at.map(|t| t + duration) {
            loop {
                if core.flushing {
                    return Err(gst::FlowError::Flushing);
                }
                let now = Instant::now();
                if now >= due || self.eos_request.give_up() {
                    break;
                }
                core = shared.wait_timeout(core, (due - now).min(Duration::from_millis(100)));
            }
            let now = Instant::now();
            // On time: keep the schedule (no drift from wake-up delays); behind: restart it.
            core.paced_at = Some(if now < due + duration { due } else { now });
        } else {
            core.paced_at = Some(Instant::now());
        }
        Ok(core)
    }

    /// Warns that `n` frames were given up after the application asked to end.
    fn warn_undelivered(&self, n: u64, what: &str) {
        let endpoint = self
            .bound_endpoint
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_default();
        let text = format!(
            "End of stream requested: {n} frames that {what} were not delivered, no worker on {endpoint} took them (counted in stats dropped-undelivered)"
        );
        if let Some(text) = self.undelivered_limit.lock().unwrap().message(text) {
            gst::element_imp_warning!(self, gst::ResourceError::Write, ("{text}"));
        }
    }
}

impl ObjectImpl for ZmqDispatchSink {
    fn constructed(&self) {
        self.parent_constructed();
        eos_request::listen(&*self.obj());
        // Files are paced by the clock (sync=true); set sync=false to dispatch as fast as
        // the workers take frames.
        self.obj().set_sync(true);
        // The collector's branch of the same pipeline is live and produces nothing until
        // frames were dispatched: prerolling here would wait for PLAYING forever.
        self.obj().set_async(false);
    }

    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            let mut v = vec![
                glib::ParamSpecString::builder("endpoint")
                    .nick("Endpoint")
                    .blurb("ZeroMQ endpoint the ROUTER socket binds, where workers (zmqworkersrc) connect, e.g. tcp://*:5555 or tcp://127.0.0.1:* (port picked, see last-endpoint)")
                    .default_value(Some(DEFAULT_ENDPOINT))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("last-endpoint")
                    .nick("Last endpoint")
                    .blurb("The endpoint actually bound (with the port ZeroMQ picked for tcp://HOST:*)")
                    .read_only()
                    .build(),
                glib::ParamSpecUInt::builder("max-queue")
                    .nick("Maximum queue")
                    .blurb("Frames waiting for a free worker, at most; what happens beyond is queue-policy")
                    .minimum(1)
                    .maximum(100_000)
                    .default_value(DEFAULT_MAX_QUEUE)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("queue-policy", DEFAULT_QUEUE_POLICY)
                    .nick("Queue policy")
                    .blurb("When the queue is full: block (slow the source down; files) or drop-oldest (stay current; live cameras)")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("worker-timeout")
                    .nick("Worker timeout")
                    .blurb("A worker silent for this long (ms) is dropped and its frames go to other workers (a killed worker's closed connection is noticed sooner, at the next heartbeat)")
                    .minimum(50)
                    .maximum(600_000)
                    .default_value(DEFAULT_WORKER_TIMEOUT_MS)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("heartbeat-interval")
                    .nick("Heartbeat interval")
                    .blurb("How often (ms) the primary sends each worker a heartbeat; it carries the session and finds closed connections")
                    .minimum(10)
                    .maximum(60_000)
                    .default_value(DEFAULT_HEARTBEAT_INTERVAL_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("group")
                    .nick("Group")
                    .blurb("Name shared with a zmqcollectsrc in the same process: with it, frames a dead worker had taken are sent again, and the collector ends its stream after the last frame")
                    .default_value(Some(DEFAULT_GROUP))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("keep-index")
                    .nick("Keep index")
                    .blurb("Keep the frame index upstream set (frame index meta, else buffer offset: frames from zmqmsgpacksrc or videotestsrc); off: number frames from 0 (multifilesrc offsets are byte positions)")
                    .default_value(DEFAULT_KEEP_INDEX)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("latent-dtype", DEFAULT_LATENT_DTYPE)
                    .nick("Latent dtype")
                    .blurb("Element type of latents on the wire (application/x-i2i-latent input): f32 as they come, f16 half the bytes; zmqworkersrc gives float32 either way")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("queued, dispatched, jobs, dropped (sum of dropped-overflow: queue-policy=drop-oldest, dropped-undelivered: given up when the end was requested and no worker took them, dropped-invalid: latent buffers whose size does not match their caps), redispatched, unaccounted, unreturned (frames a connected worker took and the zmqcollectsrc of the group played past without them: the worker dropped them or was later than playout-delay), queue-length, in-flight, workers, workers-joined/left/lost, malformed (worker messages), refused (CURVE peers), worker-list (name, batch, frames, in-flight, credit, idle-ms, unreturned)")
                    .read_only()
                    .build(),
            ];
            v.extend(
                ElementCurve::param_specs("workers")
                    .into_iter()
                    .filter(|p| p.name() != "curve-server-key"),
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
            "max-queue" => settings.max_queue = value.get().expect("type checked upstream"),
            "queue-policy" => settings.queue_policy = value.get().expect("type checked upstream"),
            "worker-timeout" => {
                settings.worker_timeout_ms = value.get().expect("type checked upstream")
            }
            "heartbeat-interval" => {
                settings.heartbeat_interval_ms = value.get().expect("type checked upstream")
            }
            "group" => {
                settings.group = value
                    .get::<Option<String>>()
                    .expect("type checked upstream")
                    .unwrap_or_else(|| DEFAULT_GROUP.into())
            }
            "keep-index" => settings.keep_index = value.get().expect("type checked upstream"),
            "latent-dtype" => settings.latent_dtype = value.get().expect("type checked upstream"),
            other => unreachable!("no writable property {other}"),
        }
        drop(settings);
        if matches!(
            pspec.name(),
            "max-queue" | "queue-policy" | "worker-timeout"
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
            "last-endpoint" => self.bound_endpoint.lock().unwrap().to_value(),
            "max-queue" => settings.max_queue.to_value(),
            "queue-policy" => settings.queue_policy.to_value(),
            "worker-timeout" => settings.worker_timeout_ms.to_value(),
            "heartbeat-interval" => settings.heartbeat_interval_ms.to_value(),
            "group" => settings.group.to_value(),
            "keep-index" => settings.keep_index.to_value(),
            "latent-dtype" => settings.latent_dtype.to_value(),
            "stats" => {
                drop(settings);
                let mut s = match self.shared() {
                    Some(shared) => stats_structure(&shared.lock(), Instant::now()),
                    None => self
                        .last_stats
                        .lock()
                        .unwrap()
                        .clone()
                        .unwrap_or_else(|| gst::Structure::new_empty("zmqdispatchsink-stats")),
                };
                s.set("refused", self.curve.refused());
                s.to_value()
            }
            other => unreachable!("no property {other}"),
        }
    }
}

impl GstObjectImpl for ZmqDispatchSink {}

impl ElementImpl for ZmqDispatchSink {
    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        self.deprecations.post_pending(&*self.obj());
        zmq_element::sink_change_state(self, transition)
    }

    fn send_event(&self, event: gst::Event) -> bool {
        self.eos_request.send_event(self, *CAT, event)
    }

    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "ZeroMQ scale-out dispatcher",
                "Sink/Network",
                "Hands each image/jpeg frame (or batch of consecutive frames) to the next free \
                 worker (zmqworkersrc) over a ZeroMQ ROUTER socket, following the workers' ready \
                 requests; latents (application/x-i2i-latent) go as [timestamp, index, payload, \
                 meta] per frame; bounded queue, worker heartbeats, re-dispatch of a lost \
                 worker's frames",
                "i2i developers",
            )
        });
        Some(&*METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static PAD_TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            zmq_element::frames_pad_templates(
                gst::PadDirection::Sink,
                &latent::jpeg_or_latent_caps(),
            )
        });
        PAD_TEMPLATES.as_ref()
    }
}

impl BaseSinkImpl for ZmqDispatchSink {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        if self.state.lock().unwrap().is_some() {
            // Already started by change_state (zmq_element::start_before_base).
            return Ok(());
        }
        let settings = self.settings.lock().unwrap().clone();
        let endpoint = settings.endpoint.clone();
        let options = zmq_endpoint::Options {
            endpoint: &endpoint,
            bind: true,
            linger_ms: 0,
            send_hwm: None,
            rcv_hwm: None,
            max_message_size: None,
            name: "ROUTER",
            purpose: ", for the workers",
            examples: zmq_endpoint::SCALEOUT_EXAMPLES,
            peer: "worker",
        };
        let (opened, ()) = zmq_element::open(
            zmq::ROUTER,
            &options,
            gst::ResourceError::OpenWrite,
            self.obj().upcast_ref(),
            &self.curve,
            |_, socket| {
                socket
                    .set_router_mandatory(true)
                    .map_err(|e| ("set ZMQ_ROUTER_MANDATORY on", e))
            },
            |_| false,
        )?;
        let zmq_endpoint::Opened {
            socket,
            context,
            endpoint: bound,
        } = opened;
        gst::info!(CAT, imp = self, "workers connect to {bound}");
        *self.bound_endpoint.lock().unwrap() = Some(bound);

        let ledger = ledger::ledger(&settings.group);
        ledger.new_stream();
        ledger.set_holds_source(Some(settings.queue_policy == DispatchQueuePolicy::Block));
        let session = scaleout::new_session();
        let shared = Shared::new(
            Core {
                sched: Scheduler::new(
                    session,
                    settings.max_queue as usize,
                    policy(settings.queue_policy),
                    Duration::from_millis(settings.worker_timeout_ms.into()),
                    ledger.has_collector(),
                ),
                drain_requested: false,
                count: 0,
                last: None,
                last_progress: Instant::now(),
                malformed: 0,
                undelivered: 0,
                invalid: 0,
                paced_at: None,
            },
            ledger,
        )?;
        let io = Io {
            element: self.obj().downgrade(),
            shared: shared.clone(),
            socket,
            _context: context,
            heartbeat: Duration::from_millis(settings.heartbeat_interval_ms.into()),
            malformed_limit: RateLimit::new(Duration::from_secs(1)),
            unreturned_limit: std::cell::RefCell::new(RateLimit::new(Duration::from_secs(1))),
        };
        let io = SocketThread::spawn("zmqdispatch-io", shared, move || io.run())?;
        gst::debug!(CAT, imp = self, "session {session:#x}");
        self.eos_request.clear();
        *self.state.lock().unwrap() = Some(State { io });
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        self.curve.stop();
        let state = self.state.lock().unwrap().take();
        if let Some(state) = state {
            let stats = stats_structure(&state.io.shared().lock(), Instant::now());
            state.io.shared().extra.set_holds_source(None);
            state.io.stop();
            *self.last_stats.lock().unwrap() = Some(stats);
        }
        Ok(())
    }

    fn set_caps(&self, caps: &gst::Caps) -> Result<(), gst::LoggableError> {
        let s = caps
            .structure(0)
            .ok_or_else(|| gst::loggable_error!(CAT, "Empty caps"))?;
        let input = if s.name() == LATENT_CAPS_NAME {
            Some(latent::meta_from_caps(s, "zmqdispatchsink").map_err(|e| {
                gst::element_imp_error!(self, gst::CoreError::Negotiation, ("{e}"));
                gst::loggable_error!(CAT, "{e}")
            })?)
        } else {
            None
        };
        gst::debug!(CAT, imp = self, "caps {caps}");
        *self.latent_input.lock().unwrap() = input;
        *self.frame_duration.lock().unwrap() = s
            .get::<gst::Fraction>("framerate")
            .ok()
            .and_then(source_output::frame_duration)
            .map(Duration::from);
        Ok(())
    }

    fn render(&self, buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        let Some(shared) = self.shared() else {
            return Err(gst::FlowError::Flushing);
        };
        let (keep_index, hold, latent_dtype) = {
            let settings = self.settings.lock().unwrap();
            (
                settings.keep_index,
                settings.queue_policy == DispatchQueuePolicy::Block,
                settings.latent_dtype,
            )
        };
        let meta = self.latent_input.lock().unwrap().clone();
        if let Some(meta) = &meta
            && let Some(wrong) = latent::f32_size_error(buffer.size(), meta)
        {
            let invalid = {
                let mut core = shared.lock();
                core.invalid += 1;
                core.invalid
            };
            let text = format!(
                "Dropped a latent buffer (PTS {}): {wrong} ({invalid} dropped)",
                buffer.pts().display()
            );
            gst::warning!(CAT, imp = self, "{text}");
            if let Some(text) = self.invalid_limit.lock().unwrap().message(text) {
                gst::element_imp_warning!(self, gst::StreamError::Format, ("{text}"));
            }
            return Ok(gst::FlowSuccess::Ok);
        }
        // Bounded waits, to look at the end request now and then.
        let poll = Duration::from_millis(100);
        let mut core = shared.lock();
        // With block: nothing is taken in before the first worker joined (module text).
        while hold && core.sched.stats().workers_joined == 0 {
            if core.flushing {
                return Err(gst::FlowError::Flushing);
            }
            if self.eos_request.give_up() {
                core.undelivered += 1;
                drop(core);
                self.warn_undelivered(1, "waited for the first worker");
                return Ok(gst::FlowSuccess::Ok);
            }
            core = shared.wait_timeout(core, poll);
        }
        let pace = self
            .frame_duration
            .lock()
            .unwrap()
            .filter(|_| buffer.pts().is_none() && self.obj().is_sync());
        if let Some(duration) = pace {
            core = self.wait_for_pace(&shared, core, duration)?;
        }
        let timestamp_ms = unix_time::ms_from_meta(buffer).unwrap_or_else(unix_time::now_ms);
        let index = if keep_index {
            frame_index::index_of(buffer).unwrap_or(core.count)
        } else {
            core.count
        };
        core.count = index + 1;
        shared.extra.dispatched(index);
        let payload = match meta {
            None => Payload::Jpeg(buffer.clone()),
            Some(mut meta) => {
                let map = buffer.map_readable().map_err(|_| {
                    gst::element_imp_error!(
                        self,
                        gst::ResourceError::Read,
                        ("Could not map the latent buffer")
                    );
                    gst::FlowError::Error
                })?;
                meta.dtype = latent_dtype.into();
                let (mut msg, mut wire) = (Vec::new(), Vec::new());
                latent::encode_into(&mut msg, &mut wire, timestamp_ms, index, &map, &meta);
                Payload::Tensor(Arc::new(msg))
            }
        };
        let mut frame = Frame {
            index,
            timestamp_ms,
            payload,
        };
        loop {
            if core.flushing {
                return Err(gst::FlowError::Flushing);
            }
            match core.sched.push(frame) {
                Ok(()) => break,
                Err(_) if self.eos_request.give_up() => {
                    core.undelivered += 1;
                    drop(core);
                    self.warn_undelivered(1, "waited for room in the queue");
                    return Ok(gst::FlowSuccess::Ok);
                }
                Err(back) => {
                    frame = back;
                    core = shared.wait_timeout(core, poll);
                }
            }
        }
        core.last = Some((index, timestamp_ms));
        drop(core);
        shared.waker.wake();
        Ok(gst::FlowSuccess::Ok)
    }

    fn event(&self, event: gst::Event) -> bool {
        match event.view() {
            gst::EventView::Eos(_) => {
                if let Some(shared) = self.shared() {
                    self.wait_until_dispatched(&shared);
                    let mut core = shared.lock();
                    shared.extra.set_end(Some(End { last: core.last }));
                    core.drain_requested = true;
                    drop(core);
                    shared.waker.wake();
                    gst::debug!(CAT, imp = self, "input ended; workers asked to drain");
                }
            }
            gst::EventView::FlushStop(_) => {
                if let Some(shared) = self.shared() {
                    let mut core = shared.lock();
                    core.sched.clear_queue();
                    core.paced_at = None;
                    drop(core);
                    shared.extra.new_stream();
                    shared.cond.notify_all();
                }
            }
            gst::EventView::StreamStart(_) => {
                if let Some(shared) = self.shared() {
                    shared.extra.new_stream();
                }
            }
            _ => {}
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
