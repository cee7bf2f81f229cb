// SPDX-License-Identifier: MPL-2.0
//! Benchmark of the ZeroMQ msgpack transport, in one run:
//!
//! 1. peak memory of a sink-to-source loopback at frame 1,000 and at frame 10,000;
//! 2. zmqmsgpacksink throughput on 512x512 RGB and I420 frames against the stock
//!    `jpegenc ! fakesink` on the same frames at the same quality (ratio, target >= 0.95);
//! 3. loopback latency sink to source at 30 fps (p50, p99; target p99 < 5 ms);
//! 4. what each message form costs for one 512x512 frame: float32 latents, float16 latents
//!    (`latent-dtype=f16`) and the JPEG of the picture (encoded in the sink, as a user
//!    sending raw video pays it), each sent and received in a sink-to-source loopback:
//!    bytes per message, wall time and CPU time (send and receive, one process) per frame.
//!
//! ```text
//! cargo run --release -p gst-plugin-zmqsink --example zmq-bench \
//!     [-- --frames N --rounds R --memory-frames N --latency-frames N --forms-frames N]
//!     (0 skips a phase)
//! ```
//!
//! The sink sends with PUSH to a PULL socket that a reader process (this program with
//! `--reader N`) drains, so encoding, packing and sending are all in the measured work, a
//! frame counts only once it has been received, and the CPU time measured in this process
//! is the sending pipeline's alone.

use std::collections::HashMap;
use std::io::BufRead;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;

const SIZE: usize = 512;
const QUALITY: i32 = 85;
const DISTINCT_FRAMES: usize = 30;

/// Deterministic frames that are not trivially compressible: smooth colour fields,
/// edges and fine noise, moving from frame to frame.
fn render_rgb(k: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (k as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 25) as i32 - 12
    };
    let t = k as f32 * 0.21;
    let mut v = vec![0u8; SIZE * SIZE * 3];
    for y in 0..SIZE {
        for x in 0..SIZE {
            let (fx, fy) = (x as f32 / 37.0, y as f32 / 29.0);
            let r = 128.0 + 90.0 * (fx + t).sin() * (fy * 0.7).cos();
            let g = 128.0 + 90.0 * ((fx + fy) * 0.5 - t).sin();
            let b = if ((x / 64) + (y / 64) + k).is_multiple_of(2) {
                200.0
            } else {
                60.0
            };
            let p = &mut v[(y * SIZE + x) * 3..(y * SIZE + x) * 3 + 3];
            for (c, base) in p.iter_mut().zip([r, g, b]) {
                *c = (base as i32 + noise()).clamp(0, 255) as u8;
            }
        }
    }
    v
}

/// BT.601 limited-range I420 from RGB (what videoconvert gives for SD video).
fn rgb_to_i420(rgb: &[u8]) -> Vec<u8> {
    let (w, h) = (SIZE, SIZE);
    let mut out = vec![0u8; w * h * 3 / 2];
    let (yp, rest) = out.split_at_mut(w * h);
    let (up, vp) = rest.split_at_mut(w * h / 4);
    for y in 0..h {
        for x in 0..w {
            let p = &rgb[(y * w + x) * 3..];
            let (r, g, b) = (p[0] as f32, p[1] as f32, p[2] as f32);
            yp[y * w + x] = (16.0 + 0.257 * r + 0.504 * g + 0.098 * b).round() as u8;
            if x.is_multiple_of(2) && y.is_multiple_of(2) {
                let i = (y / 2) * (w / 2) + x / 2;
                up[i] = (128.0 - 0.148 * r - 0.291 * g + 0.439 * b)
                    .round()
                    .clamp(0.0, 255.0) as u8;
                vp[i] = (128.0 + 0.439 * r - 0.368 * g - 0.071 * b)
                    .round()
                    .clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

fn buffers(frames: &[Vec<u8>]) -> Vec<gst::Buffer> {
    frames
        .iter()
        .map(|f| gst::Buffer::from_slice(f.clone()))
        .collect()
}

fn launch(desc: &str) -> gst::Pipeline {
    gst::parse::launch(desc)
        .unwrap_or_else(|e| panic!("pipeline {desc}: {e}"))
        .downcast::<gst::Pipeline>()
        .unwrap()
}

fn appsrc(p: &gst::Pipeline) -> gst_app::AppSrc {
    p.by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap()
}

/// The endpoint the receiving pipeline's `rx` source bound (an ephemeral port).
fn bound_endpoint(p: &gst::Pipeline) -> String {
    p.by_name("rx")
        .unwrap()
        .property::<Option<String>>("last-endpoint")
        .unwrap()
}

fn wait_eos(p: &gst::Pipeline) {
    let bus = p.bus().unwrap();
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(600)) {
        match msg.view() {
            gst::MessageView::Eos(_) => return,
            gst::MessageView::Error(e) => panic!("{}: {:?}", e.error(), e.debug()),
            _ => {}
        }
    }
    panic!("no EOS");
}

/// Pushes `n` frames (cycling through `frames`, shared, not copied), then EOS.
fn feed(src: &gst_app::AppSrc, frames: &[gst::Buffer], n: usize) {
    for i in 0..n {
        src.push_buffer(frames[i % frames.len()].clone())
            .expect("push");
    }
    src.end_of_stream().expect("eos");
}

/// The consumer of the throughput runs: this program again (`--reader N`), in its own
/// process, so that the CPU time measured here is the sending pipeline's alone. It binds a
/// PULL socket, prints the endpoint, drains N messages and prints their total size.
struct Reader {
    endpoint: String,
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl Reader {
    fn start(n: usize) -> Reader {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--reader", &n.to_string()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the reader process");
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let endpoint = lines.next().expect("reader endpoint").unwrap();
        Reader {
            endpoint,
            child,
            lines,
        }
    }

    /// Waits until the reader has every message; returns their total size.
    fn wait(mut self) -> u64 {
        let line = self.lines.next().expect("reader result").unwrap();
        let _ = self.child.wait();
        line.trim_start_matches("done ").parse().unwrap()
    }
}

fn reader_main(n: usize) {
    let ctx = zmq::Context::new();
    let sock = ctx.socket(zmq::PULL).unwrap();
    sock.set_linger(0).unwrap();
    sock.bind("tcp://127.0.0.1:*").unwrap();
    println!("{}", sock.get_last_endpoint().unwrap().unwrap());
    let mut msg = zmq::Message::new();
    let mut bytes = 0u64;
    for _ in 0..n {
        sock.recv(&mut msg, 0).unwrap();
        bytes += msg.len() as u64;
    }
    println!("done {bytes}");
}

/// One throughput run: frames per second (wall clock), CPU ms per frame (whole process)
/// and mean bytes per frame.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    fps: f64,
    cpu_ms: f64,
    bytes: f64,
}

/// `appsrc ! jpegenc ! fakesink`.
fn run_jpegenc(caps: &str, frames: &[gst::Buffer], n: usize) -> Run {
    let p = launch(&format!(
        "appsrc name=src is-live=false format=time block=true max-buffers=4 caps={caps} \
         ! jpegenc quality={QUALITY} ! fakesink name=out sync=false signal-handoffs=true"
    ));
    let bytes = Arc::new(AtomicU64::new(0));
    {
        let bytes = bytes.clone();
        p.by_name("out")
            .unwrap()
            .connect("handoff", false, move |args| {
                let b = args[1].get::<gst::Buffer>().unwrap();
                bytes.fetch_add(b.size() as u64, Ordering::Relaxed);
                None
            });
    }
    let src = appsrc(&p);
    p.set_state(gst::State::Playing).unwrap();
    let cpu0 = process_cpu_secs();
    let start = Instant::now();
    feed(&src, frames, n);
    wait_eos(&p);
    let secs = start.elapsed().as_secs_f64();
    let cpu = process_cpu_secs() - cpu0;
    p.set_state(gst::State::Null).unwrap();
    Run {
        fps: n as f64 / secs,
        cpu_ms: cpu * 1000.0 / n as f64,
        bytes: bytes.load(Ordering::Relaxed) as f64 / n as f64,
    }
}

/// `appsrc ! zmqmsgpacksink socket-type=push`, until the reader process has every frame.
fn run_sink(caps: &str, frames: &[gst::Buffer], n: usize) -> Run {
    let reader = Reader::start(n);
    let p = launch(&format!(
        "appsrc name=src is-live=false format=time block=true max-buffers=4 caps={caps} \
         ! zmqmsgpacksink socket-type=push bind=false endpoint={} quality={QUALITY} sync=false",
        reader.endpoint
    ));
    let src = appsrc(&p);
    p.set_state(gst::State::Playing).unwrap();
    let cpu0 = process_cpu_secs();
    let start = Instant::now();
    feed(&src, frames, n);
    let total = reader.wait();
    let secs = start.elapsed().as_secs_f64();
    let cpu = process_cpu_secs() - cpu0;
    wait_eos(&p);
    p.set_state(gst::State::Null).unwrap();
    Run {
        fps: n as f64 / secs,
        cpu_ms: cpu * 1000.0 / n as f64,
        bytes: total as f64 / n as f64,
    }
}

/// float32 latents `[1, 4, SIZE/8, SIZE/8]` in native byte order, roughly N(0, 1) as a
/// UNet's are, different for each `k`.
fn render_latents(k: usize) -> Vec<u8> {
    let mut state = 0x2545_F491_4F6C_DD1Du64 ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..4 * (SIZE / 8) * (SIZE / 8))
        .flat_map(|_| {
            // Irwin-Hall: the sum of 12 uniforms less 6 is close to N(0, 1).
            let v: f32 = (0..12).map(|_| uniform()).sum::<f32>() - 6.0;
            v.to_ne_bytes()
        })
        .collect()
}

/// One frame form's loopback: `appsrc ! zmqmsgpacksink push` -> `zmqmsgpacksrc pull ! rx
/// ! appsink`, as fast as back-pressure allows. Wall time per frame from the first push
/// to the last frame received, CPU time per frame of the whole process (both pipelines)
/// and bytes per message as the sink counted them.
fn run_form(caps: &str, sink_props: &str, rx: &str, frames: &[gst::Buffer], n: usize) -> Run {
    let rxp = launch(&format!(
        "zmqmsgpacksrc name=rx socket-type=pull bind=true endpoint=tcp://127.0.0.1:* {rx} \
         ! appsink name=sink sync=false emit-signals=true"
    ));
    let count = Arc::new(AtomicU64::new(0));
    {
        let count = count.clone();
        let sink = rxp
            .by_name("sink")
            .unwrap()
            .downcast::<gst_app::AppSink>()
            .unwrap();
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |s| {
                    let _ = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    count.fetch_add(1, Ordering::AcqRel);
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
    }
    rxp.set_state(gst::State::Playing).unwrap();
    let endpoint = bound_endpoint(&rxp);
    let tx = launch(&format!(
        "appsrc name=src is-live=false format=time block=true max-buffers=4 caps=\"{caps}\" \
         ! zmqmsgpacksink name=tx socket-type=push bind=false endpoint={endpoint} quality={QUALITY} \
         sync=false {sink_props}"
    ));
    let src = appsrc(&tx);
    tx.set_state(gst::State::Playing).unwrap();
    let cpu0 = process_cpu_secs();
    let start = Instant::now();
    feed(&src, frames, n);
    let deadline = Instant::now() + Duration::from_secs(120);
    let rx_bus = rxp.bus().unwrap();
    while count.load(Ordering::Acquire) < n as u64 && Instant::now() < deadline {
        if let Some(m) = rx_bus.pop_filtered(&[gst::MessageType::Error]) {
            panic!("receiving pipeline: {m:?}");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = process_cpu_secs() - cpu0;
    assert_eq!(count.load(Ordering::Acquire), n as u64, "frames lost");
    wait_eos(&tx);
    let stats = tx
        .by_name("tx")
        .unwrap()
        .property::<gst::Structure>("stats");
    tx.set_state(gst::State::Null).unwrap();
    rxp.set_state(gst::State::Null).unwrap();
    Run {
        fps: n as f64 / secs,
        cpu_ms: cpu * 1000.0 / n as f64,
        bytes: stats.get::<u64>("bytes").unwrap() as f64 / n as f64,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Latency from the moment a buffer is made to its arrival at an appsink after
/// zmqmsgpacksrc, sending at 30 fps; returns sorted latencies in ms.
fn run_latency(caps: &str, frames: &[gst::Buffer], n: usize) -> Vec<f64> {
    let rx = launch(
        "zmqmsgpacksrc name=rx socket-type=pull bind=true endpoint=tcp://127.0.0.1:* \
         ! appsink name=sink sync=false emit-signals=true",
    );
    let made: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<(u64, f64)>>> = Arc::default();
    {
        let (made, latencies) = (made.clone(), latencies.clone());
        let sink = rx
            .by_name("sink")
            .unwrap()
            .downcast::<gst_app::AppSink>()
            .unwrap();
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |s| {
                    let arrived = Instant::now();
                    let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let offset = sample.buffer().unwrap().offset();
                    if let Some(t) = made.lock().unwrap().remove(&offset) {
                        latencies
                            .lock()
                            .unwrap()
                            .push((offset, arrived.duration_since(t).as_secs_f64() * 1000.0));
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
    }
    rx.set_state(gst::State::Playing).unwrap();
    let endpoint = bound_endpoint(&rx);
    let tx = launch(&format!(
        "appsrc name=src is-live=true format=time do-timestamp=true caps={caps} \
         ! zmqmsgpacksink socket-type=push bind=false endpoint={endpoint} quality={QUALITY} sync=false"
    ));
    let src = appsrc(&tx);
    tx.set_state(gst::State::Playing).unwrap();
    std::thread::sleep(Duration::from_millis(300)); // connection set up
    let period = Duration::from_nanos(33_333_333);
    let start = Instant::now();
    for i in 0..n {
        let next = start + period * i as u32;
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        // The frame is "made" now: a copy of a pre-rendered one, as a camera would fill it.
        let mut b = frames[i % frames.len()].copy();
        b.get_mut().unwrap().set_offset(i as u64);
        made.lock().unwrap().insert(i as u64, Instant::now());
        src.push_buffer(b).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while latencies.lock().unwrap().len() < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    tx.set_state(gst::State::Null).unwrap();
    rx.set_state(gst::State::Null).unwrap();
    let l = latencies.lock().unwrap().clone();
    assert_eq!(l.len(), n, "frames lost in the latency run");
    let slow: Vec<String> = l
        .iter()
        .filter(|(_, ms)| *ms > 5.0)
        .map(|(i, ms)| format!("#{i}: {ms:.1} ms"))
        .collect();
    if !slow.is_empty() {
        eprintln!("  {} frames over 5 ms: {}", slow.len(), slow.join(", "));
    }
    let mut l: Vec<f64> = l.into_iter().map(|(_, ms)| ms).collect();
    l.sort_by(|a, b| a.partial_cmp(b).unwrap());
    l
}

/// CPU time of the whole process (all threads, user + system) in seconds, from
/// /proc/self/stat (clock ticks of 10 ms).
fn process_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is the 14th field
    // of the line, i.e. index 11 after ") ".
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    ticks as f64 / 100.0
}

fn proc_status_kib(field: &str) -> u64 {
    let f = std::fs::File::open("/proc/self/status").unwrap();
    for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix(field) {
            return rest
                .trim_start_matches(':')
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0);
        }
    }
    0
}

/// Sink to source loopback of raw I420 frames as fast as backpressure allows; VmHWM and
/// VmRSS (KiB) when the receiver has frame 1,000 and frame 10,000.
fn run_memory(frames: &[gst::Buffer], n: usize) -> Vec<(usize, u64, u64)> {
    let rx = launch(
        "zmqmsgpacksrc name=rx socket-type=pull bind=true endpoint=tcp://127.0.0.1:* \
         ! appsink name=sink sync=false emit-signals=true",
    );
    let marks: Arc<Mutex<Vec<(usize, u64, u64)>>> = Arc::default();
    let count = Arc::new(AtomicU64::new(0));
    {
        let (marks, count) = (marks.clone(), count.clone());
        let sink = rx
            .by_name("sink")
            .unwrap()
            .downcast::<gst_app::AppSink>()
            .unwrap();
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |s| {
                    let _ = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let c = count.fetch_add(1, Ordering::AcqRel) as usize + 1;
                    if c == 1000 || c == 10_000 || c == n {
                        marks.lock().unwrap().push((
                            c,
                            proc_status_kib("VmHWM"),
                            proc_status_kib("VmRSS"),
                        ));
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
    }
    rx.set_state(gst::State::Playing).unwrap();
    let endpoint = bound_endpoint(&rx);
    let tx = launch(&format!(
        "appsrc name=src is-live=false format=time block=true max-buffers=4 \
         caps=video/x-raw,format=I420,width={SIZE},height={SIZE},framerate=30/1 \
         ! zmqmsgpacksink socket-type=push bind=false endpoint={endpoint} quality={QUALITY} sync=false"
    ));
    let src = appsrc(&tx);
    tx.set_state(gst::State::Playing).unwrap();
    feed(&src, frames, n);
    wait_eos(&tx);
    let deadline = Instant::now() + Duration::from_secs(30);
    while count.load(Ordering::Acquire) < n as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    tx.set_state(gst::State::Null).unwrap();
    rx.set_state(gst::State::Null).unwrap();
    marks.lock().unwrap().clone()
}

fn main() {
    let mut frames_n = 600usize;
    let mut rounds = 9usize;
    let mut memory_n = 10_000usize;
    let mut latency_n = 300usize;
    let mut forms_n = 600usize;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = || {
            args.get(i + 1)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{} needs a number", args[i]))
        };
        match args[i].as_str() {
            "--reader" => {
                reader_main(value());
                return;
            }
            "--frames" => frames_n = value(),
            "--rounds" => rounds = value(),
            "--memory-frames" => memory_n = value(),
            "--latency-frames" => latency_n = value(),
            "--forms-frames" => forms_n = value(),
            other => panic!(
                "unknown argument {other}; use --frames N --rounds R --memory-frames N --latency-frames N --forms-frames N (0 skips a phase)"
            ),
        }
        i += 2;
    }

    gst::init().unwrap();
    gstzmqsink::plugin_register_static().unwrap();

    eprintln!("rendering {DISTINCT_FRAMES} frames of {SIZE}x{SIZE} ...");
    let rgb: Vec<Vec<u8>> = (0..DISTINCT_FRAMES).map(render_rgb).collect();
    let i420: Vec<Vec<u8>> = rgb.iter().map(|f| rgb_to_i420(f)).collect();
    let rgb_buffers = buffers(&rgb);
    let i420_buffers = buffers(&i420);
    let rgb_caps = format!("video/x-raw,format=RGB,width={SIZE},height={SIZE},framerate=30/1");
    let i420_caps = format!("video/x-raw,format=I420,width={SIZE},height={SIZE},framerate=30/1");
    // The same planes declared full range (as jpegdec outputs): the sink encodes them as
    // they are, without the range expansion that limited-range video needs.
    let i420_full_caps = format!(
        "video/x-raw,format=I420,width={SIZE},height={SIZE},framerate=30/1,colorimetry=1:4:0:0"
    );
    let mut enc = i2i_core::jpeg::Encoder::new(QUALITY).unwrap();
    let jpeg_buffers: Vec<gst::Buffer> = rgb
        .iter()
        .map(|f| {
            let j = enc
                .encode_packed(
                    i2i_core::jpeg::PackedFormat::Rgb,
                    i2i_core::jpeg::Plane {
                        data: f,
                        stride: SIZE * 3,
                    },
                    SIZE,
                    SIZE,
                )
                .unwrap();
            gst::Buffer::from_slice(j.to_vec())
        })
        .collect();
    let jpeg_caps = format!("image/jpeg,width={SIZE},height={SIZE},framerate=30/1");

    println!(
        "zmq-bench: {SIZE}x{SIZE}, quality {QUALITY}, {} CPU cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // A phase with a count of 0 is skipped.
    // 1. Memory first, so that VmHWM is this phase's peak.
    if memory_n > 0 {
        eprintln!("memory: {memory_n} frames sink -> source ...");
        let marks = run_memory(&i420_buffers, memory_n);
        println!(
            "\n## Peak memory, I420 {SIZE}x{SIZE} -> zmqmsgpacksink -> zmqmsgpacksrc -> appsink (one process)"
        );
        println!("| frames received | VmHWM (MiB) | VmRSS (MiB) |");
        println!("|---:|---:|---:|");
        for (c, hwm, rss) in &marks {
            println!(
                "| {c} | {:.1} | {:.1} |",
                *hwm as f64 / 1024.0,
                *rss as f64 / 1024.0
            );
        }
        if let (Some(first), Some(last)) = (marks.first(), marks.last()) {
            println!(
                "VmHWM growth from frame {} to frame {}: {:+.1} MiB",
                first.0,
                last.0,
                (last.1 as f64 - first.1 as f64) / 1024.0
            );
        }
    }

    // 2. Throughput, alternating the two each round. On a shared machine the wall-clock
    // rate of the best round is the one least disturbed; CPU time per frame (of this
    // process: the pipeline, without the reader) depends less on what else runs, so both
    // are shown.
    if rounds > 0 && frames_n > 0 {
        println!("\n## Throughput, {frames_n} frames a round, best of {rounds} rounds");
        println!(
            "| input | jpegenc ! fakesink (fps) | zmqmsgpacksink push (fps) | ratio (fps) | \
         jpegenc CPU (ms/frame) | sink CPU (ms/frame) | ratio (CPU) | jpegenc JPEG (KiB) | sink message (KiB) |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (name, caps, frames) in [
            ("RGB", &rgb_caps, &rgb_buffers),
            ("I420 (limited range)", &i420_caps, &i420_buffers),
            ("I420 (full range)", &i420_full_caps, &i420_buffers),
        ] {
            let (mut enc, mut sink) = (Run::default(), Run::default());
            let (mut enc_cpu, mut sink_cpu) = (f64::MAX, f64::MAX);
            for r in 0..rounds {
                eprintln!("throughput {name}: round {} ...", r + 1);
                let e = run_jpegenc(caps, frames, frames_n);
                let s = run_sink(caps, frames, frames_n);
                eprintln!(
                    "  jpegenc {:.1} fps {:.2} ms CPU, sink {:.1} fps {:.2} ms CPU",
                    e.fps, e.cpu_ms, s.fps, s.cpu_ms
                );
                if e.fps > enc.fps {
                    enc = e;
                }
                if s.fps > sink.fps {
                    sink = s;
                }
                enc_cpu = enc_cpu.min(e.cpu_ms);
                sink_cpu = sink_cpu.min(s.cpu_ms);
            }
            println!(
                "| {name} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} |",
                enc.fps,
                sink.fps,
                sink.fps / enc.fps,
                enc_cpu,
                sink_cpu,
                enc_cpu / sink_cpu,
                enc.bytes / 1024.0,
                sink.bytes / 1024.0
            );
        }
    }

    // 3. Latency at 30 fps.
    if latency_n > 0 {
        run_latencies(
            latency_n,
            &jpeg_caps,
            &jpeg_buffers,
            &i420_caps,
            &i420_buffers,
        );
    }

    // 4. The message forms of one frame.
    if forms_n > 0 && rounds > 0 {
        run_forms(forms_n, rounds, &rgb_caps, &rgb_buffers);
    }
}

fn run_latencies(
    latency_n: usize,
    jpeg_caps: &str,
    jpeg_buffers: &[gst::Buffer],
    i420_caps: &str,
    i420_buffers: &[gst::Buffer],
) {
    println!(
        "\n## Loopback latency at 30 fps, {latency_n} frames (buffer made -> appsink after zmqmsgpacksrc)"
    );
    println!("| input to the sink | p50 (ms) | p99 (ms) | max (ms) |");
    println!("|---|---:|---:|---:|");
    for (name, caps, frames) in [
        ("image/jpeg (sent as is)", jpeg_caps, jpeg_buffers),
        ("I420 (encoded in the sink)", i420_caps, i420_buffers),
    ] {
        eprintln!("latency {name} ...");
        let l = run_latency(caps, frames, latency_n);
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} |",
            percentile(&l, 0.5),
            percentile(&l, 0.99),
            l[l.len() - 1]
        );
    }
}

fn run_forms(n: usize, rounds: usize, rgb_caps: &str, rgb_buffers: &[gst::Buffer]) {
    let latents: Vec<gst::Buffer> = (0..DISTINCT_FRAMES)
        .map(|k| gst::Buffer::from_slice(render_latents(k)))
        .collect();
    let latent_caps = format!(
        "application/x-i2i-latent,dtype=float32,layout=nchw,channels=4,width={w},height={w},\
         image-width={SIZE},image-height={SIZE},scaling-factor=0.18215,framerate=30/1",
        w = SIZE / 8
    );
    println!(
        "\n## Message forms of one {SIZE}x{SIZE} frame, sink -> source loopback (one process), {n} frames a round, best of {rounds} rounds"
    );
    println!(
        "| form | bytes per message (KiB) | frames/s | wall ms/frame | CPU ms/frame (send + receive) |"
    );
    println!("|---|---:|---:|---:|---:|");
    let forms: [(&str, &str, &str, &str, &[gst::Buffer]); 4] = [
        (
            "float32 latents [1, 4, 64, 64], bit for bit",
            &latent_caps,
            "",
            "",
            &latents,
        ),
        (
            "float16 latents (latent-dtype=f16), widened on receipt",
            &latent_caps,
            "latent-dtype=f16",
            "",
            &latents,
        ),
        (
            "JPEG of the RGB picture, quality 85 (encoded in the sink)",
            rgb_caps,
            "",
            "",
            rgb_buffers,
        ),
        (
            "same JPEG, decoded on receipt (jpegdec, I420)",
            rgb_caps,
            "",
            "! jpegdec",
            rgb_buffers,
        ),
    ];
    for (name, caps, sink_props, rx, frames) in forms {
        let mut best = Run::default();
        let mut cpu = f64::MAX;
        for r in 0..rounds {
            eprintln!("forms {name}: round {} ...", r + 1);
            let run = run_form(caps, sink_props, rx, frames, n);
            eprintln!(
                "  {:.1} fps, {:.3} ms CPU, {:.1} KiB",
                run.fps,
                run.cpu_ms,
                run.bytes / 1024.0
            );
            if run.fps > best.fps {
                best = run;
            }
            cpu = cpu.min(run.cpu_ms);
        }
        println!(
            "| {name} | {:.1} | {:.0} | {:.3} | {:.3} |",
            best.bytes / 1024.0,
            best.fps,
            1000.0 / best.fps,
            cpu
        );
    }
}
