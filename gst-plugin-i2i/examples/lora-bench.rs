// SPDX-License-Identifier: MPL-2.0
//! What LoRA styles cost: the inference cost per frame with LoRA tensors bound against the
//! same model with zeros bound (no LoRA), and the time from a LoRA switch to the first
//! changed output frame of a playing `i2itransform`, measured in the same run.
//!
//! ```text
//! cargo run --release -p gst-plugin-i2i --example lora-bench -- [--model models/tiny-lora]
//!     [--size 128] [--frames 40] [--rounds 5] [--switches 10] [--threads 1] [--rank 64]
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
//! 3. A LoRA of real size: an adapter with the shapes of SD 1.5's 128 attention projections
//!    at `--rank` (64: about 51 MB of float32) is written and read + parsed 5 times
//!    (median: what a switch costs whoever reads it). For the tiny UNet, whose shapes are
//!    fixed, style-a's file padded with unused bytes to the same size stands in (the
//!    format lets bytes lie unreferenced; reading it costs the read of the size, not the
//!    parse). Two engines run side by side, style switched (padded file, then off) every 8
//!    frames, the file's modification time moved before each switch so it is read again:
//!    the old path, the engine reading the file when asked (`Engine::load`, on the
//!    inference thread, as `i2itransform` did), against the new, `Engine::share_adapters`
//!    with the file read by another thread (as the `lora` setter does) and bound at the
//!    next call once in memory. Each reports the median and the worst CPU time of the
//!    inference thread for one frame (switch + model call) across `--switches` switches.
//!    Then the element with the padded file: the longest interval between output frames
//!    over the switches against the median interval.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;
use gsti2i::diffusion::lora::AdapterCache;
use gsti2i::diffusion::{CfgType, Engine, InputFrame, StreamParams};
use gsti2i::runtime::adapter_file;

mod common;
use common::thread_cpu;

struct Args {
    model: PathBuf,
    size: u32,
    frames: usize,
    rounds: usize,
    switches: usize,
    threads: usize,
    rank: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        model: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/tiny-lora")),
        size: 128,
        frames: 40,
        rounds: 5,
        switches: 10,
        threads: 1,
        rank: 64,
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
            "--rank" => a.rank = num(v()?)?,
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
    let opts = common::cpu_options(&a.model, a.size, a.threads);
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

fn switch_latency(a: &Args, style: &str, touch_file: Option<&Path>) -> Result<(), String> {
    gst::init().map_err(|e| e.to_string())?;
    // Registered once per process.
    let _ = gsti2i::plugin_register_static();
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
        if let (Some(f), 0) = (touch_file, s % 2) {
            touch(f)?;
        }
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
        "element, {}x{}: LoRA switch to {} (property set, the file read by the setter) to the first changed output frame over {} switches: median {med:.1} ms, max {max:.1} ms = {:.2} / {:.2} frame intervals ({frame:.1} ms a frame); model loads: {started}",
        a.size,
        a.size,
        Path::new(style)
            .file_name()
            .map_or(style.into(), |n| n.to_string_lossy()),
        a.switches,
        med / frame,
        max / frame
    );
    Ok(())
}

/// The shapes of SD 1.5's attention projections: (name, in, out) for the 16 transformer
/// blocks' attn1 and attn2 q, k, v and out (attn2's k and v take the 768 text features).
fn sd15_projections() -> Vec<(String, usize, usize)> {
    let mut blocks = Vec::new();
    for (d, c) in [(0, 320), (1, 640), (2, 1280)] {
        for a in 0..2 {
            blocks.push((format!("down_blocks.{d}.attentions.{a}"), c));
        }
    }
    blocks.push(("mid_block.attentions.0".to_string(), 1280));
    for (u, c) in [(1, 1280), (2, 640), (3, 320)] {
        for a in 0..3 {
            blocks.push((format!("up_blocks.{u}.attentions.{a}"), c));
        }
    }
    let mut out = Vec::new();
    for (b, c) in blocks {
        for attn in ["attn1", "attn2"] {
            for p in ["to_q", "to_k", "to_v", "to_out.0"] {
                let inp = if attn == "attn2" && (p == "to_k" || p == "to_v") {
                    768
                } else {
                    c
                };
                out.push((format!("{b}.transformer_blocks.0.{attn}.{p}"), inp, c));
            }
        }
    }
    out
}

/// An SD 1.5-sized LoRA adapter of `rank` (float32, values that are not all alike).
fn sd15_adapter(rank: usize) -> Vec<u8> {
    let mut params: Vec<(String, Vec<i64>, Vec<u8>)> = Vec::new();
    let mut x = 1u32;
    let mut values = |n: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|_| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((x >> 9) as f32 / (1u32 << 23) as f32 - 0.5).to_le_bytes()
            })
            .collect()
    };
    for (name, inp, out) in sd15_projections() {
        params.push((
            format!("{name}.lora_A.weight"),
            vec![inp as i64, rank as i64],
            values(inp * rank),
        ));
        params.push((
            format!("{name}.lora_B.weight"),
            vec![rank as i64, out as i64],
            values(rank * out),
        ));
    }
    let refs: Vec<(&str, &[i64], i32, &[u8])> = params
        .iter()
        .map(|(n, d, v)| {
            (
                n.as_str(),
                d.as_slice(),
                adapter_file::FLOAT32,
                v.as_slice(),
            )
        })
        .collect();
    adapter_file::write_bytes(&refs)
}

/// Moves the file's modification time, so that the next load reads it again.
fn touch(path: &Path) -> Result<(), String> {
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let t = std::time::SystemTime::now();
    f.set_modified(t).map_err(|e| e.to_string())
}

/// Writes the real-size adapter and the padded tiny one; times reading the real one.
fn big_files(a: &Args, style_a: &str) -> Result<(PathBuf, PathBuf), String> {
    let dir = std::env::temp_dir().join(format!("lora-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let real = dir.join(format!("sd15-rank{}.onnx_adapter", a.rank));
    let bytes = sd15_adapter(a.rank);
    std::fs::write(&real, &bytes).map_err(|e| e.to_string())?;
    let mut padded = std::fs::read(style_a).map_err(|e| format!("{style_a}: {e}"))?;
    padded.resize(bytes.len(), 0);
    let pad = dir.join("style-a-padded.onnx_adapter");
    std::fs::write(&pad, &padded).map_err(|e| e.to_string())?;
    let cache = AdapterCache::default();
    let mut times = Vec::new();
    for _ in 0..5 {
        touch(&real)?;
        let t0 = Instant::now();
        let f = cache.load(&real).map_err(|e| e.to_string())?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        if f.parameters.len() != 256 {
            return Err(format!("{} parameters read back", f.parameters.len()));
        }
    }
    println!(
        "LoRA of real size: SD 1.5 attention projections (128), rank {}, float32: {:.1} MB; read + parse: median {:.1} ms of 5 (wall), off the inference thread",
        a.rank,
        bytes.len() as f64 / 1e6,
        median(times)
    );
    Ok((dir, pad))
}

/// The inference thread's CPU time per frame across style switches to `file` (every 8
/// frames, the file read again each time): the engine reading it itself (the old path)
/// and the engine taking it from memory, read by another thread (the new).
fn switch_frame_costs(a: &Args, file: &Path) -> Result<(), String> {
    let opts = common::cpu_options(&a.model, a.size, a.threads);
    let style = format!("{}:0.8", file.display());
    let pictures: Vec<Vec<u8>> = (0..8).map(|k| picture(k, a.size)).collect();
    let mut results = Vec::new();
    for shared in [false, true] {
        let mut e = Engine::load(&opts, &params("")).map_err(|e| e.to_string())?;
        let cache = AdapterCache::default();
        if shared {
            e.share_adapters(&cache);
        }
        // What the element's settings hold: set by a "setter" thread once the file is in
        // memory (shared), or at once (the old path reads it at the next call).
        let wanted: Arc<Mutex<String>> = Arc::default();
        let mut setter: Option<std::thread::JoinHandle<()>> = None;
        let (mut all, mut at_switch) = (Vec::new(), Vec::new());
        let mut switches = 0;
        let frames = 8 + 8 * (a.switches + 1);
        for k in 0..frames {
            if k >= 8 && k % 8 == 0 && switches < a.switches {
                if let Some(h) = setter.take() {
                    h.join().map_err(|_| "setter thread panicked")?;
                }
                let value = if switches % 2 == 0 {
                    style.clone()
                } else {
                    String::new()
                };
                switches += 1;
                if !value.is_empty() {
                    touch(file)?;
                }
                if shared {
                    let (c, w) = (cache.clone(), wanted.clone());
                    setter = Some(std::thread::spawn(move || {
                        c.load_list(&value);
                        *w.lock().unwrap() = value;
                    }));
                } else {
                    *wanted.lock().unwrap() = value;
                }
            }
            let t0 = thread_cpu();
            let want = wanted.lock().unwrap().clone();
            if want != e.params().lora && e.lora_ready(&want) {
                e.set_params(&params(&want)).map_err(|e| e.to_string())?;
                at_switch.push(0.0);
            }
            let input = vec![InputFrame {
                tag: k as u64,
                rgb: pictures[k % pictures.len()].clone(),
            }];
            e.process(input).map_err(|e| e.to_string())?;
            let ms = (thread_cpu() - t0).as_secs_f64() * 1e3;
            if let Some(last) = at_switch.last_mut()
                && *last == 0.0
            {
                *last = ms;
            }
            if k >= 8 {
                all.push(ms);
            }
        }
        if let Some(h) = setter.take() {
            h.join().map_err(|_| "setter thread panicked")?;
        }
        let worst = at_switch.iter().copied().fold(0.0, f64::max);
        results.push((median(all), worst, at_switch.len()));
    }
    println!(
        "engine, {}x{}, switches to a {:.1} MB file (read again each time) and off, inference-thread CPU per frame:",
        a.size,
        a.size,
        std::fs::metadata(file).map_or(0, |m| m.len()) as f64 / 1e6
    );
    for ((name, (med, worst, n)), _) in [
        "old path (read on the inference thread)",
        "new path (read by the setter's thread)",
    ]
    .iter()
    .zip(&results)
    .zip(0..)
    {
        println!(
            "  {name:<42} median frame {med:7.2} ms, worst switch frame {worst:7.2} ms ({:.2}x the median) over {n} switches",
            worst / med
        );
    }
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
        switch_latency(&a, &file("style-a"), None)?;
        let (dir, padded) = big_files(&a, &file("style-a"))?;
        let res = switch_frame_costs(&a, &padded)
            .and_then(|()| switch_latency(&a, &padded.display().to_string(), Some(&padded)));
        let _ = std::fs::remove_dir_all(&dir);
        res
    };
    if let Err(e) = run() {
        eprintln!("lora-bench: {e}");
        std::process::exit(1);
    }
}
