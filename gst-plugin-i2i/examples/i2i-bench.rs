// SPDX-License-Identifier: MPL-2.0
//! Frames per second of `i2itransform` inside a GStreamer pipeline against the bare ONNX
//! Runtime time of the same graphs on the same frames, measured in the same run.
//!
//! ```text
//! cargo run --release -p gst-plugin-i2i --example i2i-bench -- [--model models/demo]
//!     [--frames 100] [--warmup 10] [--width 512] [--height 512] [--t-index-list 32,45]
//!     [--batch-size 1] [--threads 1] [--repeat 5]
//! ```
//!
//! Five measurements on the same in-memory frames (a moving test picture at the model size):
//! 1. bare ONNX Runtime: `Session::run` of vae_encoder, unet (the stream batch: n rows per
//!    frame, 2n for cfg full) and vae_decoder, nothing else timed: the limit; and the same
//!    calls again while two other threads preprocess the next frames and turn the decoder's
//!    outputs into RGB8, as a pipeline must (what running beside that work costs the model
//!    calls, with none of the element's code);
//! 2. the engine alone (`Engine::process`: RGB8 in, planar float out);
//! 3. the element: `appsrc (RGB) ! i2itransform ! fakesink`;
//! 4. the element behind a JPEG decoder: `appsrc (JPEG) ! jpegdec ! i2itransform ! fakesink`.
//!
//! The five take turns for `--repeat` rounds; each reports its best round in wall time
//! (frames/s) and in CPU time per frame (all threads of the process), which load from other
//! processes hardly changes. One ONNX Runtime thread by default (`--threads 0`: all CPUs),
//! so on a small machine the pipeline's other work has a core of its own, as it would next
//! to a GPU. Then where the difference goes: the engine's own stages outside ONNX Runtime,
//! the float-to-RGB8 step, the colour conversion / resize, and JPEG decoding, each timed
//! alone.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;
use gsti2i::diffusion::{self, CfgType, Engine, InputFrame, LoadOptions, StreamParams};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};

mod common;
use common::{process_cpu, thread_cpu};

#[derive(Clone, Debug)]
struct Args {
    model: PathBuf,
    frames: usize,
    warmup: usize,
    width: u32,
    height: u32,
    t_index_list: String,
    batch_size: usize,
    threads: usize,
    cfg_type: String,
    prompt: String,
    repeat: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        model: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/demo")),
        frames: 100,
        warmup: 10,
        width: 512,
        height: 512,
        t_index_list: "32,45".into(),
        batch_size: 1,
        threads: 1,
        cfg_type: "self".into(),
        prompt: "a watercolor painting of a city".into(),
        repeat: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        let num = |v: String| v.parse::<usize>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--model" => a.model = val()?.into(),
            "--frames" => a.frames = num(val()?)?,
            "--warmup" => a.warmup = num(val()?)?,
            "--width" => a.width = num(val()?)? as u32,
            "--height" => a.height = num(val()?)? as u32,
            "--t-index-list" => a.t_index_list = val()?,
            "--batch-size" => a.batch_size = num(val()?)?,
            "--threads" => a.threads = num(val()?)?,
            "--cfg-type" => a.cfg_type = val()?,
            "--prompt" => a.prompt = val()?,
            "--repeat" => a.repeat = num(val()?)?.max(1),
            "-h" | "--help" => {
                println!(
                    "i2i-bench [--model DIR] [--frames N] [--warmup N] [--width W] [--height H] \
                     [--t-index-list L] [--batch-size B] [--threads T] [--cfg-type C] [--prompt P] [--repeat R]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other} (see --help)")),
        }
    }
    // Whole batches only, so that timing starts and ends at batch boundaries.
    let b = a.batch_size.max(1);
    a.batch_size = b;
    a.warmup = a.warmup.div_ceil(b).max(1) * b;
    if a.frames < a.warmup + 2 * b {
        return Err(format!(
            "--frames must exceed the warm-up ({} frames, whole batches) by at least two batches",
            a.warmup
        ));
    }
    a.frames = a.warmup + (a.frames - a.warmup) / b * b;
    if a.threads == 0 {
        a.threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    }
    Ok(a)
}

/// A moving, colourful test picture: frames differ, so nothing can be cached or skipped.
fn picture(index: usize, w: u32, h: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity((w * h * 3) as usize);
    let (cx, cy) = (
        (index * 7 % w as usize) as i64,
        (h as usize / 2 + index * 3 % (h as usize / 4)) as i64,
    );
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            let d = ((x - cx).pow(2) + (y - cy).pow(2)) < (w as i64 / 6).pow(2);
            let r = (x * 255 / w as i64) as u8;
            let g = (y * 255 / h as i64) as u8;
            let b = ((x + y + index as i64 * 5) % 256) as u8;
            if d {
                v.extend_from_slice(&[255 - r, 200, b / 2]);
            } else {
                v.extend_from_slice(&[r, g, b]);
            }
        }
    }
    v
}

fn params(a: &Args) -> Result<StreamParams, String> {
    let t_index_list = a
        .t_index_list
        .split(',')
        .map(|s| s.trim().parse::<u32>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--t-index-list {}: {e}", a.t_index_list))?;
    let cfg_type = match a.cfg_type.as_str() {
        "none" => CfgType::None,
        "full" => CfgType::Full,
        "self" => CfgType::SelfNegative,
        "initialize" => CfgType::Initialize,
        o => {
            return Err(format!(
                "--cfg-type {o}: expected none, full, self or initialize"
            ));
        }
    };
    Ok(StreamParams {
        prompt: a.prompt.clone(),
        t_index_list,
        cfg_type,
        ..Default::default()
    })
}

fn load_options(a: &Args) -> LoadOptions {
    LoadOptions {
        model_dir: a.model.clone(),
        width: a.width,
        height: a.height,
        batch_size: a.batch_size,
        execution_provider: diffusion::ExecutionProvider::Cpu,
        intra_threads: a.threads,
        ..Default::default()
    }
}

/// CPU time of this process's thread named `name` (as /proc/self/task/*/comm shows it).
fn named_thread_cpu(name: &str) -> Option<Duration> {
    for t in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
        if comm.trim_end() == name {
            let stat = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
            let ns = stat.split_whitespace().next()?.parse::<u64>().ok()?;
            return Some(Duration::from_nanos(ns));
        }
    }
    None
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---- 1. bare ONNX Runtime ------------------------------------------------------------------

struct Graph {
    session: Session,
    inputs: Vec<(String, TensorElementType, usize)>,
    output: String,
}

impl Graph {
    fn load(dir: &std::path::Path, name: &str, threads: usize) -> Result<Graph, String> {
        let env = gsti2i::runtime::environment().map_err(|e| e.to_string())?;
        let path = dir.join(name).join("model.onnx");
        // As the engine opens its sessions.
        let open = || -> Result<Session, ort::Error> {
            let b = Session::builder(&env)?
                .with_optimization_level(GraphOptimizationLevel::Level3)
                .map_err(|e| -> ort::Error { e.into() })?;
            // Idle threads sleep instead of spinning, as in the engine.
            let b = b
                .with_intra_threads(threads)
                .map_err(|e| -> ort::Error { e.into() })?;
            let mut b = b
                .with_intra_op_spinning(false)
                .map_err(|e| -> ort::Error { e.into() })?;
            b.commit_from_file(&path)
        };
        let session = open().map_err(|e| format!("{}: {e}", path.display()))?;
        let inputs = session
            .inputs()
            .iter()
            .map(|o| match o.dtype() {
                ValueType::Tensor { ty, shape, .. } => Ok((o.name().to_string(), *ty, shape.len())),
                other => Err(format!(
                    "{}: input {} is {other:?}",
                    path.display(),
                    o.name()
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let output = session.outputs()[0].name().to_string();
        Ok(Graph {
            session,
            inputs,
            output,
        })
    }

    fn input(&self, name: &str) -> Result<(TensorElementType, usize), String> {
        self.inputs
            .iter()
            .find(|(n, ..)| n == name)
            .map(|(_, t, r)| (*t, *r))
            .ok_or(format!("no input {name} (inputs: {:?})", self.inputs))
    }

    /// Runs with float inputs cast to the declared types; returns the first output as
    /// f32 with its shape, and the wall and CPU time `Session::run` took.
    fn run(
        &mut self,
        inputs: Vec<(&str, Vec<i64>, Vec<f32>)>,
        clock: fn() -> Duration,
    ) -> Result<(Vec<i64>, Vec<f32>, Duration, Duration), String> {
        let mut values: Vec<(String, DynValue)> = Vec::new();
        for (name, shape, data) in inputs {
            let (ty, rank) = self.input(name)?;
            let shape = if rank == 0 { vec![] } else { shape };
            let v = match ty {
                TensorElementType::Float32 => {
                    Tensor::from_array((shape, data)).map(|t| t.into_dyn())
                }
                TensorElementType::Float16 => Tensor::from_array((
                    shape,
                    data.iter()
                        .map(|&x| half::f16::from_f32(x))
                        .collect::<Vec<_>>(),
                ))
                .map(|t| t.into_dyn()),
                TensorElementType::Int64 => {
                    Tensor::from_array((shape, data.iter().map(|&x| x as i64).collect::<Vec<_>>()))
                        .map(|t| t.into_dyn())
                }
                TensorElementType::Int32 => {
                    Tensor::from_array((shape, data.iter().map(|&x| x as i32).collect::<Vec<_>>()))
                        .map(|t| t.into_dyn())
                }
                other => return Err(format!("input {name}: type {other:?} not handled")),
            }
            .map_err(|e| format!("input {name}: {e}"))?;
            values.push((name.to_string(), v));
        }
        let cpu = clock();
        let start = Instant::now();
        let out = self.session.run(values).map_err(|e| format!("run: {e}"))?;
        let took = start.elapsed();
        let cpu = clock() - cpu;
        let v = &out[self.output.as_str()];
        let (shape, data) = match v.try_extract_tensor::<f32>() {
            Ok((s, d)) => (s.to_vec(), d.to_vec()),
            Err(_) => {
                let (s, d) = v
                    .try_extract_tensor::<half::f16>()
                    .map_err(|e| format!("output {}: {e}", self.output))?;
                (s.to_vec(), d.iter().map(|x| x.to_f32()).collect())
            }
        };
        Ok((shape, data, took, cpu))
    }
}

struct Bare {
    per_frame: Duration,
    cpu: Duration,
    encode: Duration,
    unet: Duration,
    decode: Duration,
}

/// RGB8 frames (a whole batch) to the encoder's input: `[b, 3, h, w]` in [-1, 1].
fn bare_preprocess(chunk: &[Vec<u8>], w: usize, h: usize) -> Vec<f32> {
    let mut x = vec![0f32; chunk.len() * 3 * h * w];
    for (f, rgb) in chunk.iter().enumerate() {
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            for c in 0..3 {
                x[((f * 3) + c) * h * w + i] = px[c] as f32 / 127.5 - 1.0;
            }
        }
    }
    x
}

fn bare_ort(a: &Args, p: &StreamParams, frames: &[Vec<u8>]) -> Result<Bare, String> {
    let (w, h) = (a.width as usize, a.height as usize);
    // Preprocess (not timed) on the thread that runs the model; the output is dropped.
    let inputs = frames
        .chunks_exact(a.batch_size)
        .map(|chunk| bare_preprocess(chunk, w, h));
    bare_ort_loop(a, p, inputs, drop, process_cpu)
}

/// Bare ONNX Runtime as a minimal pipeline: the same model calls, timed the same way (in
/// the calling thread's CPU time: with one ONNX Runtime thread the calls run there), while
/// one thread preprocesses the next frames and another turns the decoder's outputs into
/// packed RGB8 (`decoded_to_rgb8`), each with two frames of slack, as the element does.
/// What this loses against [`bare_ort`] is what running beside the pipeline's other work
/// costs the model calls on this machine, with none of the element's code involved.
fn bare_ort_pipelined(a: &Args, p: &StreamParams, frames: &[Vec<u8>]) -> Result<Bare, String> {
    let (w, h) = (a.width as usize, a.height as usize);
    let (in_tx, in_rx) = std::sync::mpsc::sync_channel::<Vec<f32>>(2);
    let (out_tx, out_rx) = std::sync::mpsc::sync_channel::<Vec<f32>>(2);
    std::thread::scope(|scope| {
        let b = a.batch_size;
        scope.spawn(move || {
            for chunk in frames.chunks_exact(b) {
                if in_tx.send(bare_preprocess(chunk, w, h)).is_err() {
                    break;
                }
            }
        });
        scope.spawn(move || {
            let mut rgb = Vec::new();
            let plane = 3 * w * h;
            while let Ok(y) = out_rx.recv() {
                for img in y.chunks_exact(plane) {
                    diffusion::decoded_to_rgb8(img, w as u32, h as u32, &mut rgb);
                    std::hint::black_box(&rgb);
                }
            }
        });
        let out = move |y: Vec<f32>| {
            let _ = out_tx.send(y);
        };
        bare_ort_loop(a, p, in_rx.into_iter(), out, thread_cpu)
    })
}

/// The model calls of one frame batch after another: `inputs` gives each batch's encoder
/// input, `output` takes the decoder's output; only the `Session::run` calls are timed,
/// in wall time and in `clock`.
fn bare_ort_loop(
    a: &Args,
    p: &StreamParams,
    inputs: impl Iterator<Item = Vec<f32>>,
    mut output: impl FnMut(Vec<f32>),
    clock: fn() -> Duration,
) -> Result<Bare, String> {
    let dir = &a.model;
    let mut text = Graph::load(dir, "text_encoder", a.threads)?;
    let mut enc = Graph::load(dir, "vae_encoder", a.threads)?;
    let mut unet = Graph::load(dir, "unet", a.threads)?;
    let mut dec = Graph::load(dir, "vae_decoder", a.threads)?;

    // The prompt is encoded once (the element does it only when the prompt changes);
    // token values do not change the time, so a fixed sequence stands in.
    let mut ids = vec![49407f32; 77];
    ids[0] = 49406.0;
    let (ehs_shape, ehs, _, _) = text.run(
        vec![(text.inputs[0].0.clone().leak(), vec![1, 77], ids)],
        clock,
    )?;
    let e = *ehs_shape.last().ok_or("text encoder output has no shape")? as usize;

    let (w, h) = (a.width as usize, a.height as usize);
    let (lw, lh) = (w / 8, h / 8);
    let b = a.batch_size;
    let n = p.t_index_list.len();
    let rows_per_frame = match p.cfg_type {
        CfgType::Full => 2 * n,
        CfgType::Initialize => n + 1,
        _ => n,
    };
    let rows = rows_per_frame * b;
    let unet_sample = unet.inputs[0].0.clone();
    let (sample_name, ts_name, ehs_name) = (
        unet.inputs
            .iter()
            .find(|i| i.0 == "sample")
            .map(|i| i.0.clone())
            .unwrap_or(unet_sample),
        "timestep".to_string(),
        "encoder_hidden_states".to_string(),
    );
    let ts_rank = unet.input(&ts_name)?.1;
    let enc_in = enc.inputs[0].0.clone();
    let dec_in = dec.inputs[0].0.clone();

    let (mut t_enc, mut t_unet, mut t_dec) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut cpu = Duration::ZERO;
    let mut timed = 0;
    for (k, x) in inputs.enumerate() {
        let (zs, z, te, ce) = enc.run(
            vec![(&enc_in, vec![b as i64, 3, h as i64, w as i64], x)],
            clock,
        )?;
        let per = 4 * lh * lw;
        let chans = zs[1] as usize;
        // The mean when the encoder returns mean and logvar; the stream batch repeats rows.
        let mut sample = Vec::with_capacity(rows * per);
        for r in 0..rows {
            let f = r % b;
            sample.extend_from_slice(&z[f * chans * lh * lw..f * chans * lh * lw + per]);
        }
        let (mut tu, mut cu) = (Duration::ZERO, Duration::ZERO);
        if ts_rank == 0 {
            // A scalar timestep: one call per step.
            for s in 0..rows_per_frame {
                let rows_s = b;
                let (_, _, t, c) = unet.run(
                    vec![
                        (
                            &sample_name,
                            vec![rows_s as i64, 4, lh as i64, lw as i64],
                            sample[s * b * per..(s + 1) * b * per].to_vec(),
                        ),
                        (&ts_name, vec![], vec![999.0 - 20.0 * s as f32]),
                        (
                            &ehs_name,
                            vec![rows_s as i64, 77, e as i64],
                            ehs.repeat(rows_s),
                        ),
                    ],
                    clock,
                )?;
                tu += t;
                cu += c;
            }
        } else {
            let ts: Vec<f32> = (0..rows).map(|r| 999.0 - 20.0 * (r % n) as f32).collect();
            let (_, _, t, c) = unet.run(
                vec![
                    (
                        &sample_name,
                        vec![rows as i64, 4, lh as i64, lw as i64],
                        sample,
                    ),
                    (&ts_name, vec![rows as i64], ts),
                    (&ehs_name, vec![rows as i64, 77, e as i64], ehs.repeat(rows)),
                ],
                clock,
            )?;
            tu = t;
            cu = c;
        }
        // The decoder gets the latent (the engine decodes x0 / sf, close to it).
        let latent: Vec<f32> = (0..b)
            .flat_map(|f| {
                z[f * chans * lh * lw..f * chans * lh * lw + per]
                    .iter()
                    .copied()
            })
            .collect();
        let (_, y, td, cd) = dec.run(
            vec![(&dec_in, vec![b as i64, 4, lh as i64, lw as i64], latent)],
            clock,
        )?;
        output(y);
        if k * b >= a.warmup {
            t_enc += te;
            t_unet += tu;
            t_dec += td;
            cpu += ce + cu + cd;
            timed += b;
        }
    }
    let per_frame = |d: Duration| d / timed.max(1) as u32;
    Ok(Bare {
        per_frame: per_frame(t_enc + t_unet + t_dec),
        cpu: per_frame(cpu),
        encode: per_frame(t_enc),
        unet: per_frame(t_unet),
        decode: per_frame(t_dec),
    })
}

// ---- 2. the engine alone ---------------------------------------------------------------------

struct EngineRun {
    per_frame: Duration,
    cpu: Duration,
    /// Engine stage time per frame outside ONNX Runtime's graphs (preprocess + postprocess).
    outside: Duration,
    timings: diffusion::Timings,
    frames: u64,
}

fn engine_alone(a: &Args, p: &StreamParams, frames: &[Vec<u8>]) -> Result<EngineRun, String> {
    let mut engine = Engine::load(&load_options(a), p).map_err(|e| e.to_string())?;
    // Timed like the element: from the moment the last warm-up frame comes out to the
    // moment the last frame comes out, so both count the same model calls.
    let mut before = None;
    let mut start = Instant::now();
    let mut cpu = process_cpu();
    let mut out = 0;
    let last_warm = a.warmup as u64 - 1;
    let mut mark = |outs: &[diffusion::OutputFrame], engine: &Engine| {
        if before.is_none() && outs.iter().any(|o| o.tag == last_warm) {
            before = Some(engine.timings());
            start = Instant::now();
            cpu = process_cpu();
        }
    };
    for (k, chunk) in frames.chunks(a.batch_size).enumerate() {
        let inputs = chunk
            .iter()
            .enumerate()
            .map(|(i, rgb)| InputFrame {
                tag: (k * a.batch_size + i) as u64,
                rgb: rgb.clone(),
            })
            .collect();
        let outs = engine.process(inputs).map_err(|e| e.to_string())?;
        mark(&outs, &engine);
        out += outs.len();
    }
    let outs = engine.drain().map_err(|e| e.to_string())?;
    mark(&outs, &engine);
    out += outs.len();
    let took = start.elapsed();
    let cpu = process_cpu() - cpu;
    if out != frames.len() {
        return Err(format!("engine returned {out} of {} frames", frames.len()));
    }
    let after = engine.timings();
    let before = before.unwrap_or_default();
    let timed = (frames.len() - a.warmup) as u32;
    let t = diffusion::Timings {
        preprocess: after.preprocess - before.preprocess,
        text: after.text - before.text,
        vae_encode: after.vae_encode - before.vae_encode,
        unet: after.unet - before.unet,
        vae_decode: after.vae_decode - before.vae_decode,
        postprocess: after.postprocess - before.postprocess,
        ..after.clone()
    };
    Ok(EngineRun {
        per_frame: took / timed,
        cpu: cpu / timed,
        outside: (t.preprocess + t.postprocess) / timed,
        timings: t,
        frames: timed as u64,
    })
}

// ---- 3./4. the element in a pipeline ---------------------------------------------------------

struct ElementRun {
    per_frame: Duration,
    cpu: Duration,
    /// CPU time per frame of the element's inference thread (its src pad task, "i2i:src").
    task_cpu: Duration,
    stats: gst::Structure,
}

fn element_run(
    a: &Args,
    source: &[gst::Buffer],
    caps: &gst::Caps,
    jpeg: bool,
) -> Result<ElementRun, String> {
    let decode = if jpeg { "jpegdec ! " } else { "" };
    let desc = format!(
        "appsrc name=src format=time max-bytes=0 ! {decode}i2itransform name=i2i model=\"{}\" width={} height={} \
         t-index-list={} batch-size={} threads={} cfg-type={} prompt=\"{}\" execution-provider=cpu \
         ! fakesink name=sink sync=false",
        a.model.display(),
        a.width,
        a.height,
        a.t_index_list,
        a.batch_size,
        a.threads,
        a.cfg_type,
        a.prompt
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
    src.set_caps(Some(caps));
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let arr = arrivals.clone();
    pipeline
        .by_name("sink")
        .unwrap()
        .static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            arr.lock().unwrap().push((
                Instant::now(),
                process_cpu(),
                named_thread_cpu("i2i:src").unwrap_or_default(),
            ));
            gst::PadProbeReturn::Ok
        });
    for b in source {
        src.push_buffer(b.clone()).map_err(|e| format!("{e:?}"))?;
    }
    src.end_of_stream().map_err(|e| format!("{e:?}"))?;
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|_| pipeline_error(&pipeline))?;
    let bus = pipeline.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(600),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .ok_or("timed out")?;
    let stats = pipeline
        .by_name("i2i")
        .unwrap()
        .property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null).unwrap();
    if let gst::MessageView::Error(e) = msg.view() {
        return Err(format!("{} ({:?})", e.error(), e.debug()));
    }
    let t = arrivals.lock().unwrap().clone();
    if t.len() != source.len() {
        return Err(format!("{} frames out of {}", t.len(), source.len()));
    }
    let timed = t.len() - a.warmup;
    Ok(ElementRun {
        per_frame: (t[t.len() - 1].0 - t[a.warmup - 1].0) / timed as u32,
        cpu: (t[t.len() - 1].1 - t[a.warmup - 1].1) / timed as u32,
        task_cpu: t[t.len() - 1].2.saturating_sub(t[a.warmup - 1].2) / timed as u32,
        stats,
    })
}

fn pipeline_error(p: &gst::Pipeline) -> String {
    let bus = p.bus().unwrap();
    while let Some(m) = bus.pop() {
        if let gst::MessageView::Error(e) = m.view() {
            return format!("{} ({:?})", e.error(), e.debug());
        }
    }
    "state change failed".into()
}

/// Encodes the frames as JPEG with jpegenc (quality 85).
fn to_jpeg(a: &Args, frames: &[Vec<u8>], caps: &gst::Caps) -> Result<Vec<gst::Buffer>, String> {
    let pipeline = gst::parse::launch(
        "appsrc name=src format=time ! jpegenc quality=85 ! appsink name=out sync=false",
    )
    .map_err(|e| e.to_string())?
    .downcast::<gst::Pipeline>()
    .unwrap();
    let src = pipeline
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    let out = pipeline
        .by_name("out")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    src.set_caps(Some(caps));
    src.set_property("max-bytes", 0u64);
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| e.to_string())?;
    for (i, f) in frames.iter().enumerate() {
        src.push_buffer(rgb_buffer(f, i))
            .map_err(|e| format!("{e:?}"))?;
    }
    src.end_of_stream().map_err(|e| format!("{e:?}"))?;
    let mut jpegs = Vec::new();
    while let Some(s) = out.try_pull_sample(gst::ClockTime::from_seconds(30)) {
        jpegs.push(s.buffer_owned().unwrap());
    }
    pipeline.set_state(gst::State::Null).unwrap();
    if jpegs.len() != frames.len() {
        return Err(format!(
            "jpegenc gave {} of {} frames ({a:?})",
            jpegs.len(),
            frames.len()
        ));
    }
    Ok(jpegs)
}

fn rgb_buffer(f: &[u8], i: usize) -> gst::Buffer {
    let mut b = gst::Buffer::from_slice(f.to_vec());
    let r = b.get_mut().unwrap();
    r.set_pts(gst::ClockTime::from_nseconds(i as u64 * 1_000_000_000 / 15));
    r.set_duration(gst::ClockTime::from_nseconds(1_000_000_000 / 15));
    r.set_offset(i as u64);
    b
}

// ---- side costs ----------------------------------------------------------------------------

fn time_per<F: FnMut()>(reps: usize, mut f: F) -> Duration {
    f();
    let start = Instant::now();
    for _ in 0..reps {
        f();
    }
    start.elapsed() / reps as u32
}

fn conversion_cost(
    from: gst_video::VideoFormat,
    fw: u32,
    fh: u32,
    w: u32,
    h: u32,
) -> Result<Duration, String> {
    let in_info = gst_video::VideoInfo::builder(from, fw, fh)
        .fps(gst::Fraction::new(15, 1))
        .build()
        .map_err(|e| e.to_string())?;
    let out_info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, w, h)
        .fps(gst::Fraction::new(15, 1))
        .build()
        .map_err(|e| e.to_string())?;
    let mut config = gst_video::VideoConverterConfig::new();
    // As the element: one thread on small machines.
    config.set_threads(
        (std::thread::available_parallelism().map_or(1, |n| n.get()) as u32 / 4).clamp(1, 4),
    );
    let conv = gst_video::VideoConverter::new(&in_info, &out_info, Some(config))
        .map_err(|e| e.to_string())?;
    let src = gst::Buffer::with_size(in_info.size()).map_err(|e| e.to_string())?;
    let mut dst = gst::Buffer::with_size(out_info.size()).map_err(|e| e.to_string())?;
    Ok(time_per(20, || {
        let s = gst_video::VideoFrameRef::from_buffer_ref_readable(src.as_ref(), &in_info).unwrap();
        let mut d =
            gst_video::VideoFrameRef::from_buffer_ref_writable(dst.get_mut().unwrap(), &out_info)
                .unwrap();
        conv.frame_ref(&s, &mut d);
    }))
}

fn jpeg_decode_cost(jpegs: &[gst::Buffer], caps: &gst::Caps) -> Result<Duration, String> {
    let pipeline = gst::parse::launch(
        "appsrc name=src format=time max-bytes=0 ! jpegdec ! fakesink sync=false",
    )
    .map_err(|e| e.to_string())?
    .downcast::<gst::Pipeline>()
    .unwrap();
    let src = pipeline
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    src.set_caps(Some(caps));
    for b in jpegs {
        src.push_buffer(b.clone()).map_err(|e| format!("{e:?}"))?;
    }
    src.end_of_stream().map_err(|e| format!("{e:?}"))?;
    let start = Instant::now();
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| e.to_string())?;
    pipeline
        .bus()
        .unwrap()
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(60),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .ok_or("jpegdec timed out")?;
    let took = start.elapsed();
    pipeline.set_state(gst::State::Null).unwrap();
    Ok(took / jpegs.len() as u32)
}

/// The machine's load average, to judge how much other processes disturbed the rounds.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(", "))
        .unwrap_or_else(|_| "unknown".into())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("i2i-bench: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let a = parse_args()?;
    gst::init().map_err(|e| e.to_string())?;
    gsti2i::plugin_register_static().map_err(|e| e.to_string())?;
    let p = params(&a)?;
    if !a.model.join("unet").join("model.onnx").exists() {
        return Err(format!(
            "{} has no unet/model.onnx: run scripts/setup.sh (it generates models/demo) or pass --model",
            a.model.display()
        ));
    }
    println!(
        "i2i-bench: {} at {}x{}, t-index-list {} (n = {}), cfg {}, batch {}, {} ONNX Runtime threads, {} frames ({} warm-up), CPU, {} cores, load average {}",
        a.model.display(),
        a.width,
        a.height,
        a.t_index_list,
        p.t_index_list.len(),
        a.cfg_type,
        a.batch_size,
        a.threads,
        a.frames,
        a.warmup,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average()
    );

    let frames: Vec<Vec<u8>> = (0..a.frames)
        .map(|i| picture(i, a.width, a.height))
        .collect();
    let rgb_caps = gst::Caps::builder("video/x-raw")
        .field("format", "RGB")
        .field("width", a.width as i32)
        .field("height", a.height as i32)
        .field("framerate", gst::Fraction::new(15, 1))
        .build();
    let rgb_buffers: Vec<gst::Buffer> = frames
        .iter()
        .enumerate()
        .map(|(i, f)| rgb_buffer(f, i))
        .collect();
    let jpeg_caps = gst::Caps::builder("image/jpeg")
        .field("width", a.width as i32)
        .field("height", a.height as i32)
        .field("framerate", gst::Fraction::new(15, 1))
        .build();
    let jpegs = to_jpeg(&a, &frames, &rgb_caps)?;

    // The five measurements take turns for `repeat` rounds. Each reports its best round
    // (load from other processes only ever slows a round down, and taking turns gives each
    // the same chances at a quiet moment) in wall time, and its least CPU time per frame
    // (all threads of this process), which other processes hardly disturb.
    let mut bares = Vec::new();
    let mut pipelined = Vec::new();
    let mut engines = Vec::new();
    let mut elements = Vec::new();
    let mut jpeg_elements = Vec::new();
    for round in 0..a.repeat {
        bares.push(bare_ort(&a, &p, &frames)?);
        pipelined.push(bare_ort_pipelined(&a, &p, &frames)?);
        engines.push(engine_alone(&a, &p, &frames)?);
        elements.push(element_run(&a, &rgb_buffers, &rgb_caps, false)?);
        jpeg_elements.push(element_run(&a, &jpegs, &jpeg_caps, true)?);
        println!(
            "  round {}: wall (CPU) ms per frame: bare {:.2} ({:.2}), bare pipelined {:.2} ({:.2}), engine {:.2} ({:.2}), element {:.2} ({:.2}), element after jpegdec {:.2} ({:.2})",
            round + 1,
            ms(bares[round].per_frame),
            ms(bares[round].cpu),
            ms(pipelined[round].per_frame),
            ms(pipelined[round].cpu),
            ms(engines[round].per_frame),
            ms(engines[round].cpu),
            ms(elements[round].per_frame),
            ms(elements[round].cpu),
            ms(jpeg_elements[round].per_frame),
            ms(jpeg_elements[round].cpu)
        );
    }
    let best = |v: Vec<(Duration, Duration)>| {
        (
            v.iter().map(|x| x.0).min().unwrap(),
            v.iter().map(|x| x.1).min().unwrap(),
        )
    };
    let bare_t = best(bares.iter().map(|b| (b.per_frame, b.cpu)).collect());
    let pipelined_t = best(pipelined.iter().map(|b| (b.per_frame, b.cpu)).collect());
    let engine_t = best(engines.iter().map(|b| (b.per_frame, b.cpu)).collect());
    let element_t = best(elements.iter().map(|b| (b.per_frame, b.cpu)).collect());
    let jpeg_t = best(jpeg_elements.iter().map(|b| (b.per_frame, b.cpu)).collect());
    bares.sort_by_key(|b| b.per_frame);
    engines.sort_by_key(|e| e.per_frame);
    elements.sort_by_key(|e| e.per_frame);
    jpeg_elements.sort_by_key(|e| e.per_frame);
    let (bare, engine, element, element_jpeg) =
        (&bares[0], &engines[0], &elements[0], &jpeg_elements[0]);

    println!(
        "  load average (1, 5, 15 min) after the rounds: {}",
        load_average()
    );

    let row = |name: &str, (wall, cpu): (Duration, Duration)| {
        println!(
            "  {name:<58} {:>8.2} {:>7.2} {:>9.3}   {:>8.2} {:>9.3}",
            ms(wall),
            1.0 / wall.as_secs_f64(),
            bare_t.0.as_secs_f64() / wall.as_secs_f64(),
            ms(cpu),
            bare_t.1.as_secs_f64() / cpu.as_secs_f64()
        )
    };
    println!();
    println!(
        "  {:<58} {:>8} {:>7} {:>9}   {:>8} {:>9}",
        "best of the rounds, per frame", "wall ms", "fps", "of limit", "CPU ms", "of limit"
    );
    row(
        "bare ONNX Runtime, same graphs and frames (the limit)",
        bare_t,
    );
    row(
        "bare ONNX Runtime beside preprocess, RGB8 threads (1)",
        pipelined_t,
    );
    row("engine alone (Engine::process, RGB8 in)", engine_t);
    row("element: appsrc RGB ! i2itransform ! fakesink", element_t);
    row(
        "element: appsrc JPEG ! jpegdec ! i2itransform ! fakesink",
        jpeg_t,
    );
    println!(
        "  bare ONNX Runtime by graph (best wall round): vae_encoder {:.2} + unet {:.2} + vae_decoder {:.2} ms",
        ms(bare.encode),
        ms(bare.unet),
        ms(bare.decode)
    );

    let task_cpu = elements.iter().map(|e| e.task_cpu).min().unwrap();
    let jpeg_task_cpu = jpeg_elements.iter().map(|e| e.task_cpu).min().unwrap();
    println!(
        "  element's inference thread (src pad task) alone: {:.2} ms CPU per frame ({:.3} of the limit), {:.2} ms behind jpegdec ({:.3})",
        ms(task_cpu),
        bare_t.1.as_secs_f64() / task_cpu.as_secs_f64(),
        ms(jpeg_task_cpu),
        bare_t.1.as_secs_f64() / jpeg_task_cpu.as_secs_f64()
    );

    let ratio = bare_t.0.as_secs_f64() / element_t.0.as_secs_f64();
    let cpu_ratio = bare_t.1.as_secs_f64() / element_t.1.as_secs_f64();
    let task_ratio = bare_t.1.as_secs_f64() / task_cpu.as_secs_f64();
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!();
    println!(
        "element / bare ONNX Runtime: {ratio:.3} in frames/s (target >= 0.95: {}); inference thread CPU per frame {:.3}x bare ONNX Runtime's (target <= 1.03: {}); whole process {cpu_ratio:.3} of the limit in CPU time per frame",
        verdict(ratio >= 0.95),
        1.0 / task_ratio,
        verdict(1.0 / task_ratio <= 1.03),
    );
    println!(
        "(1) the same model calls while two other threads preprocess the next frames and turn the outputs into RGB8 (CPU: the calling thread's): {:.3}x the CPU time of the calls alone, {:.3}x their wall time; the element's inference thread takes {:.3}x the CPU of these pipelined calls",
        pipelined_t.1.as_secs_f64() / bare_t.1.as_secs_f64(),
        pipelined_t.0.as_secs_f64() / bare_t.0.as_secs_f64(),
        task_cpu.as_secs_f64() / pipelined_t.1.as_secs_f64(),
    );

    // Where the rest goes.
    let t = &engine.timings;
    let per = |d: Duration| ms(d / engine.frames as u32);
    let mut to_rgb8 = Vec::new();
    let pixels = vec![0.5f32; 3 * (a.width * a.height) as usize];
    let to_rgb8_cost = time_per(20, || {
        diffusion::to_rgb8(&pixels, a.width, a.height, &mut to_rgb8)
    });
    let i420 = conversion_cost(
        gst_video::VideoFormat::I420,
        a.width,
        a.height,
        a.width,
        a.height,
    )?;
    let resize = conversion_cost(gst_video::VideoFormat::I420, 1280, 720, a.width, a.height)?;
    let jpeg = jpeg_decode_cost(&jpegs, &jpeg_caps)?;
    println!();
    println!("where the time goes, per frame (each measured alone):");
    println!(
        "  engine stages: preprocess {:.2} ms, vae_encode {:.2}, unet {:.2}, vae_decode {:.2}, postprocess {:.2}, text {:.2}",
        per(t.preprocess),
        per(t.vae_encode),
        per(t.unet),
        per(t.vae_decode),
        per(t.postprocess),
        per(t.text)
    );
    println!(
        "  engine outside ONNX Runtime (preprocess, tensor copies, postprocess): {:.2} ms; engine - bare: {:+.2} ms",
        ms(engine.outside),
        ms(engine_t.0) - ms(bare_t.0)
    );
    println!(
        "  to_rgb8 (planar float -> packed RGB8, on the output thread beside the next model call): {:.2} ms",
        ms(to_rgb8_cost)
    );
    println!(
        "  colour conversion I420 {}x{} -> RGB (upstream thread): {:.2} ms; resize + convert I420 1280x720 -> RGB {}x{}: {:.2} ms",
        a.width,
        a.height,
        ms(i420),
        a.width,
        a.height,
        ms(resize)
    );
    println!(
        "  JPEG decode {}x{} (jpegdec alone): {:.2} ms",
        a.width,
        a.height,
        ms(jpeg)
    );
    println!(
        "  element - engine: {:+.2} ms (RGB input), JPEG pipeline - RGB pipeline: {:+.2} ms",
        ms(element.per_frame) - ms(engine.per_frame),
        ms(element_jpeg.per_frame) - ms(element.per_frame)
    );
    let mut sums: HashMap<&str, f64> = HashMap::new();
    for (k, s) in [("rgb", &element.stats), ("jpeg", &element_jpeg.stats)] {
        sums.insert(k, s.get::<f64>("avg-inference-ms").unwrap_or(0.0));
    }
    println!(
        "  element's model call (avg-inference-ms from its stats): {:.2} ms (RGB run), {:.2} ms (JPEG run)",
        sums["rgb"], sums["jpeg"]
    );
    Ok(())
}
