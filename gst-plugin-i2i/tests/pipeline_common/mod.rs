// SPDX-License-Identifier: MPL-2.0
//! What the element tests share: GStreamer set-up, an appsink named `out` that keeps what it
//! receives, running a launch line to EOS with every bus message kept, and RGB caps.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use gst::prelude::*;

/// How long a pipeline may take to reach EOS.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// Initialises GStreamer and registers the plugins (once per test binary).
pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().unwrap();
        gsti2i::plugin_register_static().unwrap();
        gstzmqsink::plugin_register_static().unwrap();
    });
}

/// The generated model folder `models/<name>` (or `models-local/<name>` when only that one
/// has it: models generated beside a shared folder), checked for the file `needs` inside it.
pub fn model_dir(name: &str, needs: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("models").join(name);
    let local = root.join("models-local").join(name);
    let dir = if !dir.join(needs).exists() && local.join(needs).exists() {
        local
    } else {
        dir
    };
    assert!(
        dir.join(needs).exists(),
        "{} is missing: run scripts/setup.sh (it generates the test models)",
        dir.join(needs).display()
    );
    dir
}

/// A distinct packed RGB test picture of `w` x `h` per frame index.
pub fn picture(index: u64, w: u32, h: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h as u64 {
        for x in 0..w as u64 {
            for c in 0..3u64 {
                v.push(((x * 4 + y * 2 + c * 70 + index * 23) % 256) as u8);
            }
        }
    }
    v
}

/// The pipeline of the launch line `desc` (GStreamer initialised first).
pub fn launch(desc: &str) -> gst::Pipeline {
    init();
    gst::parse::launch(desc)
        .unwrap_or_else(|e| panic!("{desc}: {e}"))
        .downcast::<gst::Pipeline>()
        .unwrap()
}

/// The appsrc named `name` in `pipeline`.
pub fn appsrc(pipeline: &gst::Pipeline, name: &str) -> gst_app::AppSrc {
    pipeline
        .by_name(name)
        .unwrap_or_else(|| panic!("no element named {name}"))
        .downcast::<gst_app::AppSrc>()
        .unwrap()
}

/// Raw video caps of `format` at `w` x `h`, `fps` frames per second.
pub fn video_caps(format: &str, w: u32, h: u32, fps: i32) -> gst::Caps {
    gst::Caps::builder("video/x-raw")
        .field("format", format)
        .field("width", w as i32)
        .field("height", h as i32)
        .field("framerate", gst::Fraction::new(fps, 1))
        .build()
}

/// Keeps `keep(sample)` of everything the appsink named `out` receives (unsynchronised).
pub fn collect<T: Send + 'static>(
    pipeline: &gst::Pipeline,
    keep: impl Fn(&gst::Sample) -> T + Send + Sync + 'static,
) -> Arc<Mutex<Vec<T>>> {
    let kept = Arc::new(Mutex::new(Vec::new()));
    let sink = pipeline
        .by_name("out")
        .expect("the pipeline has an appsink named out")
        .downcast::<gst_app::AppSink>()
        .unwrap();
    sink.set_property("sync", false);
    let k = kept.clone();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                k.lock().unwrap().push(keep(&sample));
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    kept
}

/// Keeps the samples the appsink named `out` receives.
pub fn collect_samples(pipeline: &gst::Pipeline) -> Arc<Mutex<Vec<gst::Sample>>> {
    collect(pipeline, |s| s.clone())
}

/// Keeps the bytes of the buffers the appsink named `out` receives.
pub fn collect_bytes(pipeline: &gst::Pipeline) -> Arc<Mutex<Vec<Vec<u8>>>> {
    collect(pipeline, bytes)
}

/// The bytes of a sample's buffer.
pub fn bytes(s: &gst::Sample) -> Vec<u8> {
    s.buffer().unwrap().map_readable().unwrap().to_vec()
}

/// What a pipeline gave: the samples of its appsink `out` and every bus message.
#[derive(Debug)]
pub struct Run {
    pub samples: Vec<gst::Sample>,
    pub messages: Vec<gst::Message>,
}

impl Run {
    /// The texts of the warnings posted.
    pub fn warnings(&self) -> Vec<String> {
        self.messages
            .iter()
            .filter_map(|m| match m.view() {
                gst::MessageView::Warning(w) => Some(w.error().to_string()),
                _ => None,
            })
            .collect()
    }

    /// The element messages named `name`, in order.
    pub fn elements(&self, name: &str) -> Vec<gst::Structure> {
        self.messages
            .iter()
            .filter_map(|m| match m.view() {
                gst::MessageView::Element(e) => e
                    .structure()
                    .filter(|s| s.name() == name)
                    .map(|s| s.to_owned()),
                _ => None,
            })
            .collect()
    }

    /// The bytes of sample `i`.
    pub fn bytes(&self, i: usize) -> Vec<u8> {
        bytes(&self.samples[i])
    }

    /// The PTS of every sample.
    pub fn pts(&self) -> Vec<Option<gst::ClockTime>> {
        self.samples
            .iter()
            .map(|s| s.buffer().unwrap().pts())
            .collect()
    }
}

/// Waits up to `TIMEOUT` for EOS (Ok) or an error (Err with the element's path and the
/// error text), keeping every message.
pub fn wait_eos(pipeline: &gst::Pipeline, messages: &mut Vec<gst::Message>) -> Result<(), String> {
    let bus = pipeline.bus().unwrap();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("timed out waiting for EOS".into());
        }
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_nseconds(left.as_nanos() as u64)) else {
            continue;
        };
        let done = match msg.view() {
            gst::MessageView::Eos(_) => Some(Ok(())),
            gst::MessageView::Error(e) => Some(Err(format!(
                "{}: {} ({:?})",
                msg.src().map(|s| s.path_string()).unwrap_or_default(),
                e.error(),
                e.debug()
            ))),
            _ => None,
        };
        messages.push(msg);
        if let Some(r) = done {
            return r;
        }
    }
}

/// Runs the launch line `desc` (an appsink named `out`, when there is one) to EOS. An error posted on the bus,
/// also during a failed state change, is the Err text.
pub fn run_launch(desc: &str) -> Result<Run, String> {
    run_launch_with(desc, |_| ())
}

/// [`run_launch`], and `feed` gets the playing pipeline (to push into an appsrc, say).
pub fn run_launch_with(desc: &str, feed: impl FnOnce(&gst::Pipeline)) -> Result<Run, String> {
    let pipeline = launch(desc);
    let samples = if pipeline.by_name("out").is_some() {
        collect_samples(&pipeline)
    } else {
        Arc::default()
    };
    let mut messages = Vec::new();
    let res = pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| format!("{e}"))
        .and_then(|_| {
            feed(&pipeline);
            wait_eos(&pipeline, &mut messages)
        });
    // Errors posted during a failed state change are on the bus too.
    while let Some(m) = pipeline.bus().unwrap().pop() {
        messages.push(m);
    }
    pipeline.set_state(gst::State::Null).unwrap();
    let err_text = messages.iter().find_map(|m| match m.view() {
        gst::MessageView::Error(e) => Some(format!("{} ({:?})", e.error(), e.debug())),
        _ => None,
    });
    match (res, err_text) {
        (Ok(()), None) => Ok(Run {
            samples: std::mem::take(&mut samples.lock().unwrap()),
            messages,
        }),
        (_, Some(e)) => Err(e),
        (Err(e), None) => Err(e),
    }
}

/// The engine's load options on the CPU: the model in `dir` at `w` x `h`, one frame per call,
/// one thread (what the element does with the same properties, for tests that compare).
pub fn cpu_options(dir: impl Into<PathBuf>, (w, h): (u32, u32)) -> gsti2i::diffusion::LoadOptions {
    gsti2i::diffusion::LoadOptions {
        model_dir: dir.into(),
        width: w,
        height: h,
        batch_size: 1,
        execution_provider: gsti2i::diffusion::ExecutionProvider::Cpu,
        intra_threads: 1,
        ..Default::default()
    }
}

/// The engine's frames for `frames` test pictures of `w` x `h` ([`picture`]), one per call,
/// then drained, as packed RGB; `before(engine, k)` runs before frame `k` goes in.
pub fn engine_pictures(
    engine: &mut gsti2i::diffusion::Engine,
    frames: u64,
    (w, h): (u32, u32),
    mut before: impl FnMut(&mut gsti2i::diffusion::Engine, u64),
) -> Vec<Vec<u8>> {
    let mut outs = Vec::new();
    for k in 0..frames {
        before(engine, k);
        let input = vec![gsti2i::diffusion::InputFrame {
            tag: k,
            rgb: picture(k, w, h),
        }];
        outs.extend(engine.process(input).unwrap());
    }
    outs.extend(engine.drain().unwrap());
    outs.iter()
        .map(|o| {
            let mut rgb = Vec::new();
            gsti2i::diffusion::to_rgb8(&o.pixels, w, h, &mut rgb);
            rgb
        })
        .collect()
}

/// Ends the stream of `src`, waits for EOS (an error fails the test), stops the pipeline and
/// returns what `samples` ([`collect_samples`]) and the bus gathered.
pub fn finish_run(
    pipeline: &gst::Pipeline,
    src: &gst_app::AppSrc,
    samples: &Mutex<Vec<gst::Sample>>,
) -> Run {
    src.end_of_stream().unwrap();
    let mut messages = Vec::new();
    let res = wait_eos(pipeline, &mut messages);
    pipeline.set_state(gst::State::Null).unwrap();
    res.unwrap();
    Run {
        samples: std::mem::take(&mut samples.lock().unwrap()),
        messages,
    }
}

/// Test picture `k` ([`picture`]) as a buffer of a stream of frames `frame` long: PTS
/// `k * frame`, that duration, offset `k` (the frame index the element takes).
pub fn timed_picture(k: u64, (w, h): (u32, u32), frame: gst::ClockTime) -> gst::Buffer {
    let mut buf = gst::Buffer::from_mut_slice(picture(k, w, h));
    {
        let b = buf.get_mut().unwrap();
        b.set_pts(frame * k);
        b.set_duration(frame);
        b.set_offset(k);
    }
    buf
}

/// Pushes the settings update `json` into the appsrc named `settings` and returns once the
/// element `i2i` took it: refused (`settings-rejected` counted) or its string property
/// `property` changed.
pub fn send_settings(pipeline: &gst::Pipeline, json: &str, property: &str) {
    let i2i = pipeline.by_name("i2i").unwrap();
    let rejected = || {
        let s = i2i.property::<gst::Structure>("stats");
        s.get::<u64>("settings-rejected").unwrap()
    };
    let value = || i2i.property::<Option<String>>(property);
    let (r0, v0) = (rejected(), value());
    appsrc(pipeline, "settings")
        .push_buffer(gst::Buffer::from_slice(json.as_bytes().to_vec()))
        .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while rejected() == r0 && value() == v0 {
        assert!(Instant::now() < deadline, "settings {json} not taken");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Asserts that one of the run's warnings contains every text of `all`.
pub fn assert_warned(run: &Run, all: &[&str]) {
    let warnings = run.warnings();
    assert!(
        warnings.iter().any(|w| all.iter().all(|t| w.contains(t))),
        "no warning with {all:?}: {warnings:?}"
    );
}
