// SPDX-License-Identifier: MPL-2.0
//! What LoRA styles cost: the inference cost per frame with LoRA tensors bound against the
//! same model with zeros bound (no LoRA), and the time from a LoRA switch to the first
//! changed output frame of a playing `i2itransform`, measured in the same run.
//!
//! ```text
//! cargo run --release -p gst-plugin-i2i --example lora-bench -- [--model models/tiny-lora]
//!     [--size 128] [--frames 40] [--rounds 5] [--switches 10] [--threads 1]
//! ```
//!
//! 1. The engine (`Engine::process`, one frame per call, `t-index-list` 32,45) with `lora`
//!    empty (zeros of rank 1 bound), `style-a` (rank 2 on 16 projections) and `style-a` +
//!    `style-b` side by side (rank 5): the three take turns for `--rounds` rounds; each
//!    reports the median round's CPU time per frame of the calling thread (with one ONNX
//!    Runtime thread the model calls run there) and the ratio to zeros.
//! 2. The element: `appsrc ! i2itransform ! appsink` fed the same picture, the next frame
//!    pushed when the one before is out but the one in flight; the `lora` property is set
//!    (style-a, then off, in turn) and the time to the first output frame that differs from
//!    the frames before is taken, `--switches` times: median and maximum, and in frames of
//!    the steady frame interval. The model loads once (the `i2itransform-started`
//!    messages are counted).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;
use gsti2i::diffusion::{
    CfgType, Engine, ExecutionProvider, InputFrame, LoadOptions, StreamParams,
};

mod common;
use common::thread_cpu;

struct Args {
    model: PathBuf,
    size: u32,
    frames: usize,
    rounds: usize,
    switches: usize,
    threads: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        model: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/tiny-lora")),
        size: 128,
        frames: 40,
        rounds: 5,
        switches: 10,
        threads: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or(format!("{k} needs a value"));
        let num = |s: String| {
            s.parse::<usize>()
                .map_err(|_| format!("{k}: {s} is not a number"))
        };
        match k.as_str() {
            "--model" => a.model = PathBuf::from(v()?),
            "--size" => a.size = num(v()?)? as u32,
            "--frames" => a.frames = num(v()?)?,
            "--rounds" => a.rounds = num(v()?)?,
            "--switches" => a.switches = num(v()?)?,
            "--threads" => a.threads = num(v()?)?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn picture(k: usize, size: u32) -> Vec<u8> {
    let s = size as usize;
    let mut v = vec![0u8; s * s * 3];
    for y in 0..s {
        for x in 0..s {
            let i = (y * s + x) * 3;
            v[i] = ((x * 4 + k * 10) % 256) as u8;
            v[i + 1] = ((y * 3 + k * 5) % 256) as u8;
            v[i + 2] = (((x + y) * 2 + k * 30) % 256) as u8;
        }
    }
    v
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn params(lora: &str) -> StreamParams {
    StreamParams {
        prompt: "a castle on a hill".into(),
        t_index_list: vec![32, 45],
        cfg_type: CfgType::SelfNegative,
        lora: lora.into(),
        ..Default::default()
    }
}

fn engine_costs(a: &Args, loras: &[(&str, String)]) -> Result<(), String> {
    let opts = LoadOptions {
        model_dir: a.model.clone(),
        width: a.size,
        height: a.size,
        batch_size: 1,
        execution_provider: ExecutionProvider::Cpu,
        intra_threads: a.threads,
        ..Default::default()
    };
    let mut engines = Vec::new();
    for (name, list) in loras {
        let e = Engine::load(&opts, &params(list)).map_err(|e| format!("{name}: {e}"))?;
        engines.push(e);
    }
    let pictures: Vec<Vec<u8>> = (0..8).map(|k| picture(k, a.size)).collect();
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); loras.len()];
    for round in 0..=a.rounds {
        for (i, e) in engines.iter_mut().enumerate() {
            let t0 = thread_cpu();
            for k in 0..a.frames {
                let input = vec![InputFrame {
                    tag: k as u64,
                    rgb: pictures[k % pictures.len()].clone(),
                }];
                e.process(input).map_err(|e| e.to_string())?;
            }
            e.drain().map_err(|e| e.to_string())?;
            // Round 0 warms up.
            if round > 0 {
                cpu[i].push((thread_cpu() - t0).as_secs_f64() * 1e3 / a.frames as f64);
            }
        }
    }
    let base = median(cpu[0].clone());
    println!(
        "engine, {}x{}, {} frames x {} rounds, CPU ms per frame of the inference thread (median round):",
        a.size, a.size, a.frames, a.rounds
    );
    for ((name, _), c) in loras.iter().zip(&cpu) {
        let m = median(c.clone());
        println!("  {name:<28} {m:8.3} ms  {:.3}x of zeros", m / base);
    }
    Ok(())
}

/// An output frame's bytes and when it came out.
type Output = (Vec<u8>, Instant);

fn switch_latency(a: &Args, style: &str) -> Result<(), String> {
    gst::init().map_err(|e| e.to_string())?;
    gsti2i::plugin_register_static().map_err(|e| e.to_string())?;
    let desc = format!(
        "appsrc name=src format=time ! i2itransform name=i2i model=\"{}\" width={s} height={s} threads={} \
         t-index-list=32,45 ! appsink name=out sync=false",
        a.model.display(),
        a.threads,
        s = a.size
    );
    let pipeline = gst::parse::launch(&desc)
        .map_err(|e| e.to_string())?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline")?;
    let src = pipeline
        .by_name("src")
        .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
        .ok_or("no appsrc")?;
    src.set_caps(Some(
        &gst::Caps::builder("video/x-raw")
            .field("format", "RGB")
            .field("width", a.size as i32)
            .field("height", a.size as i32)
            .field("framerate", gst::Fraction::new(30, 1))
            .build(),
    ));
    let i2i = pipeline.by_name("i2i").ok_or("no i2itransform")?;
    let outputs: Arc<Mutex<Vec<Output>>> = Arc::default();
    let o = outputs.clone();
    let sink = pipeline
        .by_name("out")
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .ok_or("no appsink")?;
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |s| {
                let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let b = sample.buffer().ok_or(gst::FlowError::Error)?;
                let bytes = b
                    .map_readable()
                    .map_err(|_| gst::FlowError::Error)?
                    .to_vec();
                o.lock().unwrap().push((bytes, Instant::now()));
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| e.to_string())?;
    let still = gst::Buffer::from_mut_slice(picture(0, a.size));
    let mut pushed = 0u64;
    let count = || outputs.lock().unwrap().len() as u64;
    let push = |pushed: &mut u64| -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while *pushed > count() + 1 {
            if Instant::now() > deadline {
                return Err("frames stopped coming out".into());
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        let mut b = still.copy();
        {
            let b = b.get_mut().unwrap();
            b.set_pts(gst::ClockTime::from_mseconds(*pushed * 33));
            b.set_offset(*pushed);
        }
        src.push_buffer(b).map_err(|e| e.to_string())?;
        *pushed += 1;
        Ok(())
    };
    for _ in 0..10 {
        push(&mut pushed)?;
    }
    let mut latencies = Vec::new();
    let mut intervals = Vec::new();
    for s in 0..a.switches {
        // Steady first: the newest output is the settings' picture.
        let before_n = count() as usize + 4;
        while (count() as usize) < before_n {
            push(&mut pushed)?;
        }
        let (steady, _) = outputs.lock().unwrap().last().cloned().unwrap();
        {
            let o = outputs.lock().unwrap();
            let n = o.len();
            intervals.push((o[n - 1].1 - o[n - 3].1).as_secs_f64() * 1e3 / 2.0);
        }
        let seen = count() as usize;
        let value = if s % 2 == 0 { style } else { "off" };
        let t0 = Instant::now();
        i2i.set_property("lora", value);
        let changed_at = loop {
            push(&mut pushed)?;
            let o = outputs.lock().unwrap();
            if let Some((_, t)) = o[seen..].iter().find(|(b, t)| *t >= t0 && *b != steady) {
                break *t;
            }
            if o.len() > seen + 20 {
                return Err(format!("switch {s}: no changed frame in 20 frames"));
            }
        };
        latencies.push((changed_at - t0).as_secs_f64() * 1e3);
    }
    src.end_of_stream().map_err(|e| e.to_string())?;
    let bus = pipeline.bus().ok_or("no bus")?;
    let mut started = 0;
    while let Some(m) = bus.timed_pop(gst::ClockTime::from_seconds(60)) {
        match m.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => return Err(e.error().to_string()),
            gst::MessageView::Element(e)
                if e.structure()
                    .is_some_and(|s| s.name() == "i2itransform-started") =>
            {
                started += 1
            }
            _ => {}
        }
    }
    let _ = pipeline.set_state(gst::State::Null);
    let frame = median(intervals);
    let max = latencies.iter().copied().fold(0.0, f64::max);
    let med = median(latencies.clone());
    println!(
        "element, {}x{}: LoRA switch (property set) to the first changed output frame over {} switches: median {med:.1} ms, max {max:.1} ms = {:.2} / {:.2} frame intervals ({frame:.1} ms a frame); model loads: {started}",
        a.size,
        a.size,
        a.switches,
        med / frame,
        max / frame
    );
    Ok(())
}

fn main() {
    let run = || -> Result<(), String> {
        let a = parse_args()?;
        let file = |n: &str| {
            a.model
                .join("loras")
                .join(format!("{n}.onnx_adapter"))
                .display()
                .to_string()
        };
        let loras = [
            ("zeros (no LoRA)", String::new()),
            ("style-a (rank 2)", file("style-a")),
            (
                "style-a + style-b (rank 5)",
                format!("{}:0.8,{}:0.5", file("style-a"), file("style-b")),
            ),
        ];
        engine_costs(&a, &loras)?;
        switch_latency(&a, &file("style-a"))
    };
    if let Err(e) = run() {
        eprintln!("lora-bench: {e}");
        std::process::exit(1);
    }
}
