// SPDX-License-Identifier: MPL-2.0
//! Live control end to end: the `i2i-prompt` program (a real process) holds the settings,
//! `settingssrc` subscribes to it over ZeroMQ on 127.0.0.1, `i2itransform` applies what
//! arrives on its `settings` pad to real frames of the tiny model at 64x64, and an appsink
//! keeps every output frame with its frame index. The pipelines are written as in the
//! README (`settingssrc ! i2i.settings ... ! i2itransform name=i2i ! ...`).
//!
//! Every frame is the same picture and the similarity filter is off, so two frames made
//! with the same settings are byte-equal: the tests compare output frames directly.
//!
//! Needs `scripts/setup.sh` (models, ONNX Runtime) and the `i2i-prompt` binary next to
//! the test (`cargo build --release`; setup builds it).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use gst::prelude::*;
use gsti2i::settings::hub::ControlClient;

const W: u32 = 64;
const H: u32 = 64;
/// Longest wait for anything (settings, frames); the tests finish in seconds.
const TIMEOUT: Duration = Duration::from_secs(30);

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().unwrap();
        gsti2i::plugin_register_static().unwrap();
    });
}

fn tiny() -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-sd15");
    assert!(
        dir.join("unet/model.onnx").exists(),
        "{} is missing: run scripts/setup.sh (it generates the test models)",
        dir.display()
    );
    dir.display().to_string()
}

/// The workspace's `i2i-prompt`, built in the same target directory as this test.
fn i2i_prompt() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/release/deps/settings_e2e-HASH -> target/release/i2i-prompt
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("i2i-prompt"))
        .unwrap();
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --release -p i2i-tools` (scripts/setup.sh does)",
        bin.display()
    );
    bin
}

/// Lines a child process writes, read on a thread.
fn collect_lines(r: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            l.lock().unwrap().push(line);
        }
    });
    lines
}

fn wait_for_line(lines: &Mutex<Vec<String>>, what: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(l) = lines.lock().unwrap().iter().find(|l| what(l)) {
            return l.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no such line; saw {:?}",
            lines.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `i2i-prompt serve` on ephemeral ports; killed when dropped.
struct Holder {
    child: Child,
    state: String,
    control: String,
    stderr: Arc<Mutex<Vec<String>>>,
    client: ControlClient,
}

impl Holder {
    fn start(init: &[&str]) -> Holder {
        let mut cmd = Command::new(i2i_prompt());
        cmd.args([
            "serve",
            "--state-bind",
            "tcp://127.0.0.1:*",
            "--control-bind",
            "tcp://127.0.0.1:*",
        ]);
        for c in init {
            cmd.args(["--init", c]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start i2i-prompt serve");
        let stderr = collect_lines(child.stderr.take().unwrap());
        // "i2i-prompt: publishing settings on tcp://127.0.0.1:P, commands on tcp://127.0.0.1:Q"
        let line = wait_for_line(&stderr, |l| l.contains("publishing settings on"));
        let after = |tag: &str| {
            line.split(tag)
                .nth(1)
                .unwrap()
                .split([',', ' '])
                .next()
                .unwrap()
                .to_string()
        };
        let (state, control) = (after("settings on "), after("commands on "));
        let client = ControlClient::connect(&control, None).unwrap();
        Holder {
            child,
            state,
            control,
            stderr,
            client,
        }
    }

    /// One command through the library client (what `i2i-prompt --endpoint` does).
    fn send(&self, command: &str) {
        let answer = self
            .client
            .request(command.as_bytes(), Duration::from_secs(5))
            .unwrap();
        assert!(answer.starts_with("ok"), "{command}: {answer}");
    }

    /// One command as a script sends it: `i2i-prompt --endpoint ... COMMAND`.
    fn one_shot(&self, command: &str) {
        let out = Command::new(i2i_prompt())
            .args(["--endpoint", &self.control, command])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.starts_with("ok"),
            "{command}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One input picture, the same for every frame.
fn picture() -> Vec<u8> {
    let mut v = Vec::with_capacity((W * H * 3) as usize);
    for y in 0..H {
        for x in 0..W {
            for c in 0..3 {
                v.push(((x * 4 + y * 2 + c * 70) % 256) as u8);
            }
        }
    }
    v
}

/// `settingssrc ! i2i.settings appsrc ! i2itransform name=i2i ! appsink`, frames pushed
/// on demand with their index as offset.
struct Transform {
    pipeline: gst::Pipeline,
    src: gst_app::AppSrc,
    i2i: gst::Element,
    /// (frame index, RGB bytes), in the order they came out.
    outputs: Arc<Mutex<Vec<(u64, Vec<u8>)>>>,
    /// (frame index, values) of every `i2i-settings-applied` message.
    applied: Vec<(u64, gst::Structure)>,
    warnings: Vec<String>,
    picture: gst::Buffer,
    pushed: u64,
}

impl Transform {
    fn start(holder: &Holder, props: &str) -> Transform {
        init();
        let desc = format!(
            "settingssrc endpoint={} ! i2i.settings \
             appsrc name=src format=time caps=video/x-raw,format=RGB,width={W},height={H},framerate=30/1 \
             ! i2itransform name=i2i model={} width={W} height={H} threads=1 t-index-list=20,35 {props} \
             ! appsink name=out sync=false",
            holder.state,
            tiny()
        );
        let pipeline = gst::parse::launch(&desc)
            .unwrap()
            .downcast::<gst::Pipeline>()
            .unwrap();
        let src = pipeline
            .by_name("src")
            .unwrap()
            .downcast::<gst_app::AppSrc>()
            .unwrap();
        let i2i = pipeline.by_name("i2i").unwrap();
        // The settings pad is linked to the settingssrc.
        let peer = i2i.static_pad("settings").unwrap().peer().unwrap();
        assert_eq!(
            peer.parent_element().unwrap().factory().unwrap().name(),
            "settingssrc"
        );
        let outputs = Arc::new(Mutex::new(Vec::new()));
        let o = outputs.clone();
        let sink = pipeline
            .by_name("out")
            .unwrap()
            .downcast::<gst_app::AppSink>()
            .unwrap();
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let buf = sample.buffer().unwrap();
                    let bytes = buf.map_readable().unwrap().to_vec();
                    o.lock().unwrap().push((buf.offset(), bytes));
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        pipeline.set_state(gst::State::Playing).unwrap();
        Transform {
            pipeline,
            src,
            i2i,
            outputs,
            applied: Vec::new(),
            warnings: Vec::new(),
            picture: gst::Buffer::from_mut_slice(picture()),
            pushed: 0,
        }
    }

    fn out_count(&self) -> u64 {
        self.outputs.lock().unwrap().len() as u64
    }

    fn output(&self, index: u64) -> Option<Vec<u8>> {
        let o = self.outputs.lock().unwrap();
        o.iter().find(|(i, _)| *i == index).map(|(_, b)| b.clone())
    }

    fn poll_bus(&mut self) {
        let bus = self.pipeline.bus().unwrap();
        while let Some(msg) = bus.pop() {
            match msg.view() {
                gst::MessageView::Error(e) => {
                    panic!("pipeline error: {} ({:?})", e.error(), e.debug())
                }
                gst::MessageView::Warning(w) => self.warnings.push(w.error().to_string()),
                gst::MessageView::Element(e) => {
                    if let Some(s) = e.structure().filter(|s| s.name() == "i2i-settings-applied")
                    {
                        self.applied
                            .push((s.get::<u64>("frame-index").unwrap(), s.to_owned()));
                    }
                }
                _ => {}
            }
        }
    }

    /// Pushes the next frame once fewer than `lead` frames are waiting for their output.
    fn push(&mut self, lead: u64) {
        let deadline = Instant::now() + TIMEOUT;
        while self.pushed >= self.out_count() + lead {
            assert!(Instant::now() < deadline, "frames stopped coming out");
            self.poll_bus();
            std::thread::sleep(Duration::from_micros(200));
        }
        let mut buf = self.picture.copy();
        {
            let b = buf.get_mut().unwrap();
            let i = self.pushed;
            b.set_pts(gst::ClockTime::from_mseconds(i * 33));
            b.set_duration(gst::ClockTime::from_mseconds(33));
            b.set_offset(i);
        }
        self.src.push_buffer(buf).unwrap();
        self.pushed += 1;
        self.poll_bus();
    }

    /// Pushes frames (one every 2 ms) until settings matching `want` are applied (by a
    /// change that was not seen before this call), and returns the frame index they hold
    /// from.
    fn until_applied(&mut self, want: impl Fn(&gst::StructureRef) -> bool) -> u64 {
        let deadline = Instant::now() + TIMEOUT;
        let seen = self.applied.len();
        loop {
            self.poll_bus();
            if let Some((i, _)) = self.applied[seen..].iter().rev().find(|(_, s)| want(s)) {
                return *i;
            }
            assert!(
                Instant::now() < deadline,
                "settings not applied; applied so far: {:?}",
                self.applied
            );
            self.push(4);
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Pushes frames until frame `index` is out; returns it.
    fn frame(&mut self, index: u64) -> Vec<u8> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(f) = self.output(index) {
                return f;
            }
            assert!(Instant::now() < deadline, "frame {index} did not come out");
            // A frame waits behind the stream batch: later frames push it out.
            self.push(4);
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The first frame made with settings matching `want` (waits for them), and its index.
    fn settle(&mut self, want: impl Fn(&gst::StructureRef) -> bool) -> (u64, Vec<u8>) {
        let from = self.until_applied(want);
        (from, self.frame(from))
    }

    /// Ends the stream; every frame pushed must come out once, in order.
    fn finish(mut self) -> Vec<String> {
        self.src.end_of_stream().unwrap();
        let bus = self.pipeline.bus().unwrap();
        let msg = bus
            .timed_pop_filtered(
                gst::ClockTime::from_seconds(TIMEOUT.as_secs()),
                &[gst::MessageType::Eos, gst::MessageType::Error],
            )
            .expect("EOS");
        assert!(matches!(msg.view(), gst::MessageView::Eos(_)), "{msg:?}");
        self.poll_bus();
        let indices: Vec<u64> = self.outputs.lock().unwrap().iter().map(|o| o.0).collect();
        assert_eq!(indices, (0..self.pushed).collect::<Vec<_>>(), "frames lost");
        self.pipeline.set_state(gst::State::Null).unwrap();
        std::mem::take(&mut self.warnings)
    }
}

impl Drop for Transform {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

fn is(prompt: &'static str, seed: u64) -> impl Fn(&gst::StructureRef) -> bool {
    move |s| s.get::<&str>("prompt") == Ok(prompt) && s.get::<u64>("seed") == Ok(seed)
}

const FOX: &str = "a red fox in the snow";
const LAKE: &str = "an oil painting of a quiet lake";

#[test]
fn prompt_and_seed_changes_change_the_output_and_going_back_gives_the_first_exactly() {
    let holder = Holder::start(&[&format!("/prompt {FOX}"), "/seed 1"]);
    let mut t = Transform::start(&holder, "");
    let (_, first) = t.settle(is(FOX, 1));

    holder.one_shot("/seed 2");
    let (_, seed2) = t.settle(is(FOX, 2));
    assert_ne!(seed2, first, "a seed change did not change the picture");

    holder.one_shot(LAKE);
    let (_, lake2) = t.settle(is(LAKE, 2));
    assert_ne!(lake2, seed2, "a prompt change did not change the picture");
    assert_ne!(lake2, first);

    // Back to the first prompt and seed, from an operator console.
    let mut console = Command::new(i2i_prompt())
        .args(["--endpoint", &holder.control, "--state-endpoint", &holder.state])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let console_out = collect_lines(console.stdout.take().unwrap());
    let console_err = collect_lines(console.stderr.take().unwrap());
    let mut stdin = console.stdin.take().unwrap();
    // The console listens for reports from its start: give its subscription a moment.
    std::thread::sleep(Duration::from_millis(300));
    writeln!(stdin, "/seed 1").unwrap();
    writeln!(stdin, "{FOX}").unwrap();
    let (at, again) = t.settle(is(FOX, 1));
    assert!(again == first, "the first settings did not give the first picture again");
    // Frames later, still the same.
    assert!(t.frame(at + 3) == first);

    // What the transform applied travels back: the holder and the console show it.
    let name = t.i2i.name();
    let applied = |l: &str| {
        l.starts_with("applied by ") && l.contains("settingssrc") && l.contains("prompt=")
    };
    let holder_line = wait_for_line(&holder.stderr, |l| applied(l) && l.contains(LAKE));
    assert!(holder_line.contains(" from frame "), "{holder_line}");
    let console_line = wait_for_line(&console_err, |l| applied(l) && l.contains(FOX));
    assert!(console_line.contains("seed=1") || console_line.contains(FOX));
    assert!(
        console_out.lock().unwrap().iter().any(|l| l.starts_with("ok")),
        "{name}: console got no answer"
    );
    drop(stdin);
    let _ = console.wait();
    let warnings = t.finish();
    assert!(warnings.is_empty(), "{warnings:?}");
}
