// SPDX-License-Identifier: MPL-2.0
//! Shared pieces of the scale-out tests: plugin registration, a primary pipeline
//! (dispatcher + collector in one pipeline, as pipelines/primary.sh runs it) whose output
//! is recorded, and worker pipelines, in this process or as gst-launch-1.0 processes.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gst::prelude::*;
use gstzmqsink::scaleout::wire;

pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().expect("GStreamer initialises");
        gstzmqsink::plugin_register_static().expect("plugin registers");
    });
}

pub fn unix_now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// A name no other test in this process uses (the dispatcher/collector group).
pub fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// One frame as it left the collector.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    pub index: u64,
    pub timestamp_ms: Option<i64>,
    pub arrived_us: i64,
    pub size: usize,
    /// A hash of the frame's bytes (to compare pictures).
    pub digest: u64,
    /// The buffer's PTS, in ns.
    pub pts_ns: Option<u64>,
}

fn unix_ms_of(buffer: &gst::BufferRef) -> Option<i64> {
    buffer
        .iter_meta::<gst::ReferenceTimestampMeta>()
        .find(|m| {
            m.reference()
                .structure(0)
                .is_some_and(|s| s.name() == "timestamp/x-unix")
        })
        .map(|m| (m.timestamp().nseconds() / 1_000_000) as i64)
}

/// Records every buffer reaching `appsink`.
pub fn record(appsink: &gst_app::AppSink) -> Arc<Mutex<Vec<Out>>> {
    let outs = Arc::new(Mutex::new(Vec::new()));
    let o = outs.clone();
    appsink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let buffer = sample.buffer().ok_or(gst::FlowError::Error)?;
                o.lock().unwrap().push(Out {
                    index: gstzmqsink::frame_index::index_of(buffer).unwrap_or(u64::MAX),
                    timestamp_ms: unix_ms_of(buffer),
                    arrived_us: unix_now_us(),
                    size: buffer.size(),
                    digest: {
                        use std::hash::{Hash, Hasher};
                        let mut h = std::collections::hash_map::DefaultHasher::new();
                        if let Ok(map) = buffer.map_readable() {
                            map.as_slice().hash(&mut h);
                        }
                        h.finish()
                    },
                    pts_ns: buffer.pts().map(|t| t.nseconds()),
                });
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    outs
}

/// Dispatcher and collector in one pipeline, fed by `source` (a launch fragment ending
/// in image/jpeg), the collector's output recorded.
pub struct Primary {
    pub pipeline: gst::Pipeline,
    pub dispatch: gst::Element,
    pub collect: gst::Element,
    pub outs: Arc<Mutex<Vec<Out>>>,
    pub messages: Arc<Mutex<Vec<gst::Structure>>>,
    pub warnings: Arc<Mutex<Vec<String>>>,
    pub errors: Arc<Mutex<Vec<String>>>,
    bus_watch: Option<std::thread::JoinHandle<()>>,
    eos: Arc<(Mutex<bool>, std::sync::Condvar)>,
}

impl Primary {
    /// Builds the primary and brings it to PAUSED: the sockets are bound, workers can
    /// join, nothing is dispatched before [`Primary::play`].
    pub fn new(source: &str, dispatch_props: &str, collect_props: &str) -> Primary {
        Primary::on(
            "tcp://127.0.0.1:*",
            "tcp://127.0.0.1:*",
            source,
            dispatch_props,
            collect_props,
        )
    }

    /// Like [`Primary::new`] on given endpoints (to restart a primary on the same ports).
    pub fn on(
        dispatch_endpoint: &str,
        collect_endpoint: &str,
        source: &str,
        dispatch_props: &str,
        collect_props: &str,
    ) -> Primary {
        let group = unique("group");
        let desc = format!(
            "{source} ! zmqdispatchsink name=d endpoint={dispatch_endpoint} group={group} {dispatch_props} \
             zmqcollectsrc name=c endpoint={collect_endpoint} group={group} {collect_props} \
             ! appsink name=out sync=false"
        );
        let pipeline = gst::parse::launch(&desc)
            .unwrap_or_else(|e| panic!("pipeline {desc}: {e}"))
            .downcast::<gst::Pipeline>()
            .unwrap();
        let dispatch = pipeline.by_name("d").unwrap();
        let collect = pipeline.by_name("c").unwrap();
        let appsink = pipeline
            .by_name("out")
            .unwrap()
            .downcast::<gst_app::AppSink>()
            .unwrap();
        let outs = record(&appsink);
        let messages = Arc::new(Mutex::new(Vec::new()));
        let warnings = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let eos = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let bus = pipeline.bus().unwrap();
        let (m, w, e, done) = (
            messages.clone(),
            warnings.clone(),
            errors.clone(),
            eos.clone(),
        );
        let bus_watch = std::thread::spawn(move || {
            loop {
                let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(100)) else {
                    if *done.0.lock().unwrap() {
                        return;
                    }
                    continue;
                };
                match msg.view() {
                    gst::MessageView::Element(el) => {
                        if let Some(s) = el.structure() {
                            m.lock().unwrap().push(s.to_owned());
                        }
                    }
                    gst::MessageView::Warning(x) => w.lock().unwrap().push(format!(
                        "{}: {}",
                        x.error(),
                        x.debug().map(|d| d.to_string()).unwrap_or_default()
                    )),
                    gst::MessageView::Error(x) => {
                        e.lock().unwrap().push(format!(
                            "{}: {}",
                            x.error(),
                            x.debug().map(|d| d.to_string()).unwrap_or_default()
                        ));
                        *done.0.lock().unwrap() = true;
                        done.1.notify_all();
                        return;
                    }
                    gst::MessageView::Eos(_) => {
                        *done.0.lock().unwrap() = true;
                        done.1.notify_all();
                        return;
                    }
                    _ => {}
                }
            }
        });
        pipeline
            .set_state(gst::State::Paused)
            .expect("primary pipeline pauses");
        Primary {
            pipeline,
            dispatch,
            collect,
            outs,
            messages,
            warnings,
            errors,
            bus_watch: Some(bus_watch),
            eos,
        }
    }

    pub fn dispatch_endpoint(&self) -> String {
        self.dispatch
            .property::<Option<String>>("last-endpoint")
            .expect("dispatcher bound")
    }

    pub fn collect_endpoint(&self) -> String {
        self.collect
            .property::<Option<String>>("last-endpoint")
            .expect("collector bound")
    }

    pub fn play(&self) {
        self.pipeline
            .set_state(gst::State::Playing)
            .expect("primary pipeline plays");
    }

    /// Waits for EOS (or an error); false on timeout.
    pub fn wait_eos(&self, timeout: Duration) -> bool {
        let (lock, cond) = &*self.eos;
        let done = lock.lock().unwrap();
        let (done, _) = cond.wait_timeout_while(done, timeout, |d| !*d).unwrap();
        *done
    }

    pub fn dispatch_stats(&self) -> gst::Structure {
        self.dispatch.property::<gst::Structure>("stats")
    }

    pub fn collect_stats(&self) -> gst::Structure {
        self.collect.property::<gst::Structure>("stats")
    }

    /// Names of workers that joined (in order), from the dispatcher's bus messages.
    pub fn worker_events(&self, event: &str) -> Vec<String> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.name() == "zmqdispatchsink-worker")
            .filter(|s| s.get::<&str>("event").ok() == Some(event))
            .filter_map(|s| s.get::<String>("name").ok())
            .collect()
    }

    /// Waits until `n` workers are in the dispatcher's session.
    pub fn wait_workers(&self, n: u64, timeout: Duration) {
        let t0 = Instant::now();
        loop {
            let have = self.dispatch_stats().get::<u64>("workers").unwrap();
            if have >= n {
                return;
            }
            assert!(
                t0.elapsed() < timeout,
                "only {have} of {n} workers joined within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn output_count(&self) -> usize {
        self.outs.lock().unwrap().len()
    }
}

impl Drop for Primary {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
        {
            let (lock, cond) = &*self.eos;
            *lock.lock().unwrap() = true;
            cond.notify_all();
        }
        if let Some(t) = self.bus_watch.take() {
            let _ = t.join();
        }
    }
}

/// The checks every scale-out run must pass: strictly increasing indices (so no
/// duplicates), each with its original timestamp.
pub fn assert_in_order(outs: &[Out]) {
    for pair in outs.windows(2) {
        assert!(
            pair[1].index > pair[0].index,
            "index {} after {}: not strictly increasing",
            pair[1].index,
            pair[0].index
        );
    }
    for o in outs {
        assert!(
            o.timestamp_ms.is_some(),
            "frame {} lost its timestamp meta",
            o.index
        );
    }
}

/// A worker pipeline in this process; `middle` is what runs between decoding and
/// encoding (e.g. "videoflip method=horizontal-flip").
pub fn worker_pipeline(dispatch: &str, collect: &str, name: &str, middle: &str) -> gst::Pipeline {
    let desc = format!(
        "zmqworkersrc name=src endpoint={dispatch} client-name={name} heartbeat-interval=100 \
         ! jpegdec ! {middle} ! jpegenc \
         ! zmqmsgpacksink endpoint={collect} bind=false socket-type=push sync=false"
    );
    gst::parse::launch(&desc)
        .unwrap_or_else(|e| panic!("worker pipeline {desc}: {e}"))
        .downcast::<gst::Pipeline>()
        .unwrap()
}

/// A directory with this build's plugins, for gst-launch-1.0 processes. `cargo test`
/// builds the plugin library into target/<profile>/deps without refreshing the copy in
/// target/<profile> (only `cargo build` does), so the newer of the two is copied into
/// target/scaleout-test-plugins/<profile>, for each of this plugin and the i2i one. (Not
/// under target/<profile>: GStreamer scans plugin directories recursively, and a copy there
/// would shadow the build for anyone whose GST_PLUGIN_PATH is target/<profile>.)
pub fn plugin_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let deps = exe.parent().expect("test binary in target/<profile>/deps");
        let profile = deps.parent().expect("target/<profile>");
        let dir = profile
            .parent()
            .expect("target directory")
            .join("scaleout-test-plugins")
            .join(profile.file_name().expect("profile directory"));
        std::fs::create_dir_all(&dir).unwrap();
        // A copy under the library's old name would register the elements a second time.
        let _ = std::fs::remove_file(dir.join("libgstzmqmsgpack.so"));
        for lib in ["libgstzmqsink.so", "libgsti2i.so"] {
            let newest = [deps.join(lib), profile.join(lib)]
                .into_iter()
                .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
                .max_by_key(|(t, _)| *t);
            let Some((_, from)) = newest else {
                continue;
            };
            // Copy and rename: a worker still running from an earlier copy keeps its file.
            let tmp = dir.join(format!(".{lib}.{}", std::process::id()));
            std::fs::copy(&from, &tmp).unwrap();
            std::fs::rename(&tmp, dir.join(lib)).unwrap();
        }
        assert!(
            dir.join("libgstzmqsink.so").exists(),
            "no libgstzmqsink.so in {} or {}: build the plugin (cargo build --release -p gst-plugin-zmqsink)",
            deps.display(),
            profile.display()
        );
        dir
    })
    .clone()
}

/// The workers' plugin path: this build's plugins, after the directories in
/// `SCALEOUT_TEST_PLUGIN_PATH` if set (to try the workers with another build of a plugin).
fn worker_plugin_path() -> String {
    let own = plugin_dir().to_string_lossy().into_owned();
    match std::env::var("SCALEOUT_TEST_PLUGIN_PATH") {
        Ok(extra) if !extra.is_empty() => format!("{extra}:{own}"),
        _ => own,
    }
}

/// A worker as a gst-launch-1.0 process (so that it can be killed).
pub struct WorkerProcess {
    pub name: String,
    child: Option<Child>,
}

impl WorkerProcess {
    pub fn spawn(dispatch: &str, collect: &str, name: &str, middle: &str) -> WorkerProcess {
        let desc = format!(
            "zmqworkersrc name=src endpoint={dispatch} client-name={name} heartbeat-interval=100 \
             ! jpegdec ! {middle} ! jpegenc \
             ! zmqmsgpacksink endpoint={collect} bind=false socket-type=push sync=false"
        );
        // GStreamer replaces the registry file atomically: workers may share it.
        let registry = plugin_dir().join("registry.bin");
        let child = Command::new("gst-launch-1.0")
            .arg("-q")
            .args(desc.split_whitespace())
            .env("GST_PLUGIN_PATH", worker_plugin_path())
            .env("GST_REGISTRY", registry)
            .env("GST_DEBUG", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gst-launch-1.0 starts (gstreamer1.0-tools installed?)");
        WorkerProcess {
            name: name.into(),
            child: Some(child),
        }
    }

    /// SIGKILL: no goodbye, no draining.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `n` small JPEG frames (16x16, all different).
pub fn jpegs(n: usize) -> Vec<Vec<u8>> {
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc num-buffers={n} pattern=ball ! video/x-raw,width=16,height=16 \
         ! jpegenc ! appsink name=out sync=false"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let sink = pipeline
        .by_name("out")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut out = Vec::new();
    while let Ok(sample) = sink.pull_sample() {
        out.push(sample.buffer().unwrap().map_readable().unwrap().to_vec());
    }
    pipeline.set_state(gst::State::Null).unwrap();
    assert_eq!(out.len(), n);
    out
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` different free ports (each held until all are picked: the system may hand the
/// same one out again once it is released).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

/// Runs `pipeline` to PLAYING and returns the buffers of appsink `out` as they come.
pub fn play_recording(pipeline: &gst::Pipeline) -> Arc<Mutex<Vec<Out>>> {
    let sink = pipeline
        .by_name("out")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    let outs = record(&sink);
    pipeline.set_state(gst::State::Playing).unwrap();
    outs
}

/// Waits for EOS or an error on `pipeline`'s bus; the error text on error, panics on timeout.
pub fn wait_end(pipeline: &gst::Pipeline, timeout: Duration) -> Result<(), String> {
    let bus = pipeline.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_nseconds(timeout.as_nanos() as u64),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .unwrap_or_else(|| panic!("no EOS within {timeout:?}"));
    match msg.view() {
        gst::MessageView::Error(e) => Err(format!("{}: {:?}", e.error(), e.debug())),
        _ => Ok(()),
    }
}

/// A `queue` that lets its frames out in windows, as a decoder that decodes `n` frames
/// per call delivers them (seed 004: 17 frames at once): nothing leaves before the
/// window's last frame has entered, then the whole window leaves at once. A serialized
/// event or query reaching the queue (a drain, EOS) lets out what it holds, so a partial
/// last window is not kept back.
pub struct Windows {
    n: u64,
    state: Mutex<WindowState>,
    cond: Condvar,
}

#[derive(Default)]
struct WindowState {
    entered: u64,
    /// Frames up to this count may leave.
    open_through: u64,
    left: u64,
    /// When each frame left (µs since the epoch).
    left_at_us: Vec<i64>,
}

impl Windows {
    /// Holds the frames of the `queue` named `name` in `pipeline` (it must be able to hold
    /// a window: `max-size-buffers=0` or at least `n`) and lets them out in windows of `n`.
    pub fn attach(pipeline: &gst::Pipeline, name: &str, n: u64) -> Arc<Windows> {
        assert!(n > 0, "a window holds at least one frame");
        let queue = pipeline
            .by_name(name)
            .unwrap_or_else(|| panic!("no element {name} in the worker pipeline"));
        let windows = Arc::new(Windows {
            n,
            state: Mutex::new(WindowState::default()),
            cond: Condvar::new(),
        });
        let w = windows.clone();
        queue.static_pad("sink").unwrap().add_probe(
            gst::PadProbeType::BUFFER
                | gst::PadProbeType::EVENT_DOWNSTREAM
                | gst::PadProbeType::QUERY_DOWNSTREAM,
            move |_, info| {
                let serialized = match &info.data {
                    Some(gst::PadProbeData::Buffer(_)) => false,
                    Some(gst::PadProbeData::Event(e)) => e.is_serialized(),
                    Some(gst::PadProbeData::Query(q)) => q.is_serialized(),
                    _ => return gst::PadProbeReturn::Ok,
                };
                let mut s = w.state.lock().unwrap();
                if serialized {
                    s.open_through = s.entered;
                } else {
                    s.entered += 1;
                    if s.entered.is_multiple_of(w.n) {
                        s.open_through = s.entered;
                    }
                }
                w.cond.notify_all();
                gst::PadProbeReturn::Ok
            },
        );
        let w = windows.clone();
        queue
            .static_pad("src")
            .unwrap()
            .add_probe(gst::PadProbeType::BUFFER, move |pad, _| {
                let mut s = w.state.lock().unwrap();
                let this = s.left + 1;
                // A stopping queue flushes its pad: give up waiting then.
                while this > s.open_through && !pad.pad_flags().contains(gst::PadFlags::FLUSHING) {
                    s = w.cond.wait_timeout(s, Duration::from_millis(20)).unwrap().0;
                }
                s.left = this;
                s.left_at_us.push(unix_now_us());
                gst::PadProbeReturn::Ok
            });
        windows
    }

    /// When each frame left the queue (µs since the epoch), in order.
    pub fn left_at_us(&self) -> Vec<i64> {
        self.state.lock().unwrap().left_at_us.clone()
    }
}

/// The intervals between consecutive times, in ms.
pub fn intervals_ms(times_us: &[i64]) -> Vec<f64> {
    times_us
        .windows(2)
        .map(|p| (p[1] - p[0]) as f64 / 1000.0)
        .collect()
}

/// The `q` quantile (0..=1) of `values`, nearest rank; `None` when empty.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// A hand-written primary: a ROUTER socket speaking the wire protocol.
pub struct FakePrimary {
    pub socket: zmq::Socket,
    _ctx: zmq::Context,
    pub endpoint: String,
    pub worker: Vec<u8>,
}

impl FakePrimary {
    pub fn new() -> FakePrimary {
        let ctx = zmq::Context::new();
        let socket = ctx.socket(zmq::ROUTER).unwrap();
        socket.set_rcvtimeo(3000).unwrap();
        socket.bind("tcp://127.0.0.1:*").unwrap();
        let endpoint = socket.get_last_endpoint().unwrap().unwrap();
        FakePrimary {
            socket,
            _ctx: ctx,
            endpoint,
            worker: Vec::new(),
        }
    }

    pub fn recv(&mut self) -> wire::WorkerMsg {
        let parts = self
            .socket
            .recv_multipart(0)
            .expect("a message from the worker");
        self.worker = parts[0].clone();
        wire::decode_worker(&parts[1..]).unwrap()
    }

    /// The next ready message matching `f` (heartbeats repeat the state).
    pub fn ready_where(&mut self, f: impl Fn(&wire::Ready) -> bool) -> wire::Ready {
        loop {
            if let wire::WorkerMsg::Ready(r) = self.recv()
                && f(&r)
            {
                return r;
            }
        }
    }

    pub fn send(&self, parts: &[Vec<u8>]) {
        let mut all = vec![self.worker.clone()];
        all.extend(parts.iter().cloned());
        self.socket.send_multipart(all, 0).unwrap();
    }

    pub fn job(&self, body: Vec<u8>) {
        self.send(&[wire::KIND_JOB.to_vec(), body]);
    }
}
