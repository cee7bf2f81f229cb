// SPDX-License-Identifier: MPL-2.0
//! Frames per second of `onnxtransform` inside a GStreamer pipeline against bare ONNX
//! Runtime on the same graph and frames, measured in the same run.
//!
//! ```text
//! cargo run --release -p gst-plugin-i2i --example onnx-bench -- [--model models/style-tiny/model.onnx]
//!     [--frames 100] [--width 512] [--height 512] [--threads 1] [--batch-size 1] [--repeat 5]
//! ```
//!
//! 1. bare ONNX Runtime: `Session::run` on the input tensor of each frame (prepared before
//!    timing, float32 NCHW as the model declares), nothing else timed: the limit;
//! 2. the element: `appsrc (RGB) ! onnxtransform ! fakesink`, conversion to the tensor and
//!    back included (on the streaming and output threads).
//!
//! The two take turns for `--repeat` rounds; each reports its best round in wall time
//! (frames/s) and in CPU time per frame (all threads of the process, which load from other
//! processes hardly changes). One ONNX Runtime
//! thread by default, so the pipeline's other work has a core of its own, as it would next
//! to a GPU.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use gst::prelude::*;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{Tensor, TensorElementType, ValueType};

mod common;
use common::process_cpu;

/// One side's round: frames/s and CPU milliseconds per frame.
type Round = (f64, f64);

struct Args {
    model: PathBuf,
    frames: usize,
    width: u32,
    height: u32,
    threads: usize,
    batch_size: usize,
    repeat: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        model: PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../models/style-tiny/model.onnx"
        )),
        frames: 100,
        width: 512,
        height: 512,
        threads: 1,
        batch_size: 1,
        repeat: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<usize>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--model" => a.model = v.into(),
            "--frames" => a.frames = num(&v)?,
            "--width" => a.width = num(&v)? as u32,
            "--height" => a.height = num(&v)? as u32,
            "--threads" => a.threads = num(&v)?,
            "--batch-size" => a.batch_size = num(&v)?.max(1),
            "--repeat" => a.repeat = num(&v)?.max(1),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(a)
}

fn picture(i: usize, w: u32, h: u32) -> Vec<u8> {
    (0..(w * h * 3) as usize)
        .map(|v| ((v * 7 + i * 31 + v / (w as usize * 3)) % 256) as u8)
        .collect()
}

/// Bare ONNX Runtime: frames/s of `Session::run` alone.
fn bare(a: &Args, frames: &[Vec<u8>]) -> Result<Round, String> {
    let env = gsti2i::runtime::environment().map_err(|e| e.to_string())?;
    let open = || -> Result<Session, ort::Error> {
        let b = Session::builder(&env)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| -> ort::Error { e.into() })?
            .with_intra_threads(a.threads)
            .map_err(|e| -> ort::Error { e.into() })?;
        let mut b = b
            .with_intra_op_spinning(false)
            .map_err(|e| -> ort::Error { e.into() })?;
        b.commit_from_file(&a.model)
    };
    let mut s = open().map_err(|e| format!("{}: {e}", a.model.display()))?;
    let input = s.inputs()[0].name().to_string();
    let ok = matches!(s.inputs()[0].dtype(), ValueType::Tensor { ty: TensorElementType::Float32, shape, .. } if shape.len() == 4 && shape[1] == 3);
    if !ok {
        return Err("the bare side takes float32 NCHW RGB models only".into());
    }
    let (w, h) = (a.width as usize, a.height as usize);
    let b = a.batch_size;
    let tensors: Vec<Vec<f32>> = frames
        .chunks(b)
        .filter(|c| c.len() == b)
        .map(|chunk| {
            let mut t = Vec::with_capacity(b * 3 * w * h);
            for f in chunk {
                for c in 0..3 {
                    t.extend((0..w * h).map(|i| f[i * 3 + c] as f32));
                }
            }
            t
        })
        .collect();
    let start = Instant::now();
    let cpu = process_cpu();
    for t in &tensors {
        let v = Tensor::from_array((vec![b as i64, 3, h as i64, w as i64], t.clone()))
            .map_err(|e| e.to_string())?;
        s.run(ort::inputs![input.as_str() => v])
            .map_err(|e| e.to_string())?;
    }
    let n = (tensors.len() * b) as f64;
    let cpu_ms = (process_cpu() - cpu).as_secs_f64() * 1000.0 / n;
    Ok((n / start.elapsed().as_secs_f64(), cpu_ms))
}

/// The element: frames/s from the first buffer pushed to EOS at the sink.
fn element(a: &Args, frames: &[Vec<u8>]) -> Result<Round, String> {
    let desc = format!(
        "appsrc name=src format=time ! onnxtransform model=\"{}\" threads={} batch-size={} drop-frames=never ! fakesink sync=false",
        a.model.display(),
        a.threads,
        a.batch_size
    );
    let pipeline = gst::parse::launch(&desc)
        .map_err(|e| e.to_string())?
        .downcast::<gst::Pipeline>()
        .unwrap();
    let src = pipeline
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    src.set_caps(Some(
        &gst::Caps::builder("video/x-raw")
            .field("format", "RGB")
            .field("width", a.width as i32)
            .field("height", a.height as i32)
            .field("framerate", gst::Fraction::new(30, 1))
            .build(),
    ));
    src.set_max_bytes(0);
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let cpu = process_cpu();
    for (i, f) in frames.iter().enumerate() {
        let mut buf = gst::Buffer::from_slice(f.clone());
        buf.get_mut()
            .unwrap()
            .set_pts(gst::ClockTime::from_mseconds(i as u64 * 33));
        src.push_buffer(buf).map_err(|e| format!("{e:?}"))?;
    }
    let _ = src.end_of_stream();
    let bus = pipeline.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(600),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .ok_or("timed out")?;
    let took = start.elapsed();
    let cpu_ms = (process_cpu() - cpu).as_secs_f64() * 1000.0 / frames.len() as f64;
    pipeline.set_state(gst::State::Null).unwrap();
    if let gst::MessageView::Error(e) = msg.view() {
        return Err(e.error().to_string());
    }
    Ok((frames.len() as f64 / took.as_secs_f64(), cpu_ms))
}

fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("onnx-bench: {e}");
            std::process::exit(2);
        }
    };
    gst::init().unwrap();
    gsti2i::plugin_register_static().unwrap();
    // The element loads the library through the plugin; the bare side uses the same one.
    if let Err(e) = gsti2i::runtime::environment() {
        eprintln!("onnx-bench: {e}");
        std::process::exit(1);
    }
    let frames: Vec<Vec<u8>> = (0..a.frames)
        .map(|i| picture(i, a.width, a.height))
        .collect();
    println!(
        "onnx-bench: {} at {}x{}, {} frames, batch {}, {} thread(s), {} rounds",
        a.model.display(),
        a.width,
        a.height,
        a.frames,
        a.batch_size,
        a.threads,
        a.repeat
    );
    let (mut best_bare, mut best_el) = ((0.0f64, f64::MAX), (0.0f64, f64::MAX));
    for round in 1..=a.repeat {
        let r = bare(&a, &frames).and_then(|b| Ok((b, element(&a, &frames)?)));
        match r {
            Ok((b, e)) => {
                println!(
                    "round {round}: bare {:.1} frames/s {:.2} ms CPU/frame, element {:.1} frames/s {:.2} ms CPU/frame ({:.3}x frames/s)",
                    b.0,
                    b.1,
                    e.0,
                    e.1,
                    e.0 / b.0
                );
                best_bare = (best_bare.0.max(b.0), best_bare.1.min(b.1));
                best_el = (best_el.0.max(e.0), best_el.1.min(e.1));
            }
            Err(e) => {
                eprintln!("onnx-bench: {e}");
                std::process::exit(1);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let ratio = best_el.0 / best_bare.0;
    println!(
        "best: bare {:.1} frames/s, element {:.1} frames/s: element/bare {ratio:.3}x (target >= 0.95x) {}",
        best_bare.0,
        best_el.0,
        if ratio >= 0.95 { "met" } else { "NOT met" }
    );
    println!(
        "best CPU per frame: bare {:.2} ms, element {:.2} ms (all threads): {:.3}x",
        best_bare.1,
        best_el.1,
        best_el.1 / best_bare.1
    );
}
