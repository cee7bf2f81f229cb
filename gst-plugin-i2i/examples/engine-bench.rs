// SPDX-License-Identifier: MPL-2.0
//! Engine overhead benchmark: the engine's time per frame against bare ONNX Runtime running
//! the same graphs with the same tensor shapes (sessions made directly with ort with the same
//! thread and provider settings, inputs built once, no engine logic: only `Session::run`), in
//! the same process, interleaved call by call so both see the same machine load.
//!
//!     cargo run --release -p gst-plugin-i2i --example engine-bench -- \
//!         [--model models/demo] [--size 512] [--batch 1] [--threads 1] [--frames 30]
//!         [--rounds 3] [--cfg self|none|full|initialize] [--t-index-list 32,45]
//!         [--provider cpu|cuda|tensorrt|auto] [--fp16 0|1] [--cpu-arena 0|1] [--cache DIR]
//!
//! Prints ms per frame for both, the ratio bare / engine (1.0 = no engine overhead), where
//! the time goes, and the latency of a frame (it waits n calls). With `--provider cuda` or
//! `tensorrt` on an sd-turbo-shaped model (scripts/make_models.py --sdturbo-shaped DIR) it
//! is the GPU benchmark (fps and latency at `--batch 1` and `--batch 4`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gsti2i::diffusion::{
    CfgType, Engine, ExecutionProvider, InputFrame, LoadOptions, StreamParams, Timings,
    scheduler::SchedulerConfig,
};
use gsti2i::runtime;
use half::f16;
use ort::ep;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};

mod common;
use common::thread_cpu;

struct Args {
    model: PathBuf,
    size: u32,
    batch: usize,
    threads: usize,
    frames: usize,
    rounds: usize,
    cfg: CfgType,
    t_index: Vec<u32>,
    provider: ExecutionProvider,
    fp16: bool,
    cpu_arena: bool,
    cache: Option<PathBuf>,
}

const USAGE: &str = "usage: engine-bench [--model DIR] [--size N] [--batch N] [--threads N] [--frames N] \
     [--rounds N] [--cfg none|self|full|initialize] [--t-index-list 32,45] \
     [--provider cpu|cuda|tensorrt|auto] [--fp16 0|1] [--cpu-arena 0|1] [--cache DIR]";

fn parse() -> Result<Args, String> {
    let mut a = Args {
        model: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/demo")),
        size: 512,
        batch: 1,
        threads: 1,
        frames: 30,
        rounds: 3,
        cfg: CfgType::SelfNegative,
        t_index: vec![32, 45],
        provider: ExecutionProvider::Cpu,
        fp16: true,
        cpu_arena: true,
        cache: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or(format!("{k} needs a value"));
        let num = |s: String| s.parse::<usize>().map_err(|e| format!("{k}: {e}"));
        match k.as_str() {
            "--model" => a.model = PathBuf::from(v()?),
            "--size" => a.size = num(v()?)? as u32,
            "--batch" => a.batch = num(v()?)?.max(1),
            "--threads" => a.threads = num(v()?)?,
            "--frames" => a.frames = num(v()?)?.max(1),
            "--rounds" => a.rounds = num(v()?)?.max(1),
            "--fp16" => a.fp16 = num(v()?)? != 0,
            "--cpu-arena" => a.cpu_arena = num(v()?)? != 0,
            "--cache" => a.cache = Some(PathBuf::from(v()?)),
            "--cfg" => {
                a.cfg = match v()?.as_str() {
                    "none" => CfgType::None,
                    "self" => CfgType::SelfNegative,
                    "full" => CfgType::Full,
                    "initialize" => CfgType::Initialize,
                    o => return Err(format!("--cfg: unknown {o}")),
                }
            }
            "--provider" => {
                a.provider = match v()?.as_str() {
                    "cpu" => ExecutionProvider::Cpu,
                    "cuda" => ExecutionProvider::Cuda,
                    "tensorrt" => ExecutionProvider::TensorRt,
                    "auto" => ExecutionProvider::Auto,
                    o => return Err(format!("--provider: unknown {o}")),
                }
            }
            "--t-index-list" => {
                a.t_index = v()?
                    .split(',')
                    .map(|s| s.trim().parse().map_err(|e| format!("--t-index-list: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "-h" | "--help" => return Err(USAGE.into()),
            o => return Err(format!("unknown argument {o}\n{USAGE}")),
        }
    }
    Ok(a)
}

/// A moving test picture, packed RGB8.
fn picture(k: usize, size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size * size * 3];
    for y in 0..size {
        for x in 0..size {
            let i = (y * size + x) * 3;
            v[i] = ((x + k * 5) % 256) as u8;
            v[i + 1] = ((y + k * 3) % 256) as u8;
            v[i + 2] = (((x ^ y) + k) % 256) as u8;
        }
    }
    v
}

fn ms(d: Duration, frames: usize) -> f64 {
    d.as_secs_f64() * 1000.0 / frames.max(1) as f64
}

/// A tensor of the element type a graph input declares.
fn tensor(elem: TensorElementType, shape: Vec<i64>, data: &[f32]) -> DynValue {
    match elem {
        TensorElementType::Float16 => {
            let d: Vec<f16> = data.iter().map(|&v| f16::from_f32(v)).collect();
            Tensor::from_array((shape, d)).unwrap().into_dyn()
        }
        TensorElementType::Int64 => {
            let d: Vec<i64> = data.iter().map(|&v| v as i64).collect();
            Tensor::from_array((shape, d)).unwrap().into_dyn()
        }
        TensorElementType::Int32 => {
            let d: Vec<i32> = data.iter().map(|&v| v as i32).collect();
            Tensor::from_array((shape, d)).unwrap().into_dyn()
        }
        _ => Tensor::from_array((shape, data.to_vec()))
            .unwrap()
            .into_dyn(),
    }
}

fn input_type(s: &Session, name: &str) -> (TensorElementType, usize) {
    let o = s
        .inputs()
        .iter()
        .find(|o| o.name() == name)
        .unwrap_or_else(|| panic!("no input {name}"));
    match o.dtype() {
        ValueType::Tensor { ty, shape, .. } => (*ty, shape.len()),
        other => panic!("{name}: {other}"),
    }
}

/// Bare ONNX Runtime: sessions and their inputs, made once.
struct Bare {
    enc: Session,
    unet: Session,
    dec: Session,
    enc_in: DynValue,
    /// Named UNet inputs per call (SDXL adds text_embeds and time_ids).
    unet_in: Vec<Vec<(&'static str, DynValue)>>,
    dec_in: DynValue,
    enc_t: Duration,
    unet_t: Duration,
    dec_t: Duration,
}

fn providers(a: &Args, cache: &Path) -> Vec<ep::ExecutionProviderDispatch> {
    match a.provider {
        ExecutionProvider::Cpu => Vec::new(),
        ExecutionProvider::Cuda => vec![ep::CUDA::default().build().error_on_failure()],
        ExecutionProvider::TensorRt | ExecutionProvider::Auto => vec![
            ep::TensorRT::default()
                .with_fp16(a.fp16)
                .with_engine_cache(true)
                .with_engine_cache_path(cache.display().to_string())
                .with_timing_cache(true)
                .with_timing_cache_path(cache.display().to_string())
                .build()
                .error_on_failure(),
            ep::CUDA::default().build().error_on_failure(),
        ],
    }
}

impl Bare {
    fn session(a: &Args, comp: &str, cache: &Path) -> Session {
        let env = runtime::environment().unwrap_or_else(|e| panic!("{e}"));
        let mut b = Session::builder(&env)
            .unwrap()
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .unwrap();
        if a.threads > 0 {
            b = b.with_intra_threads(a.threads).unwrap();
        }
        // The engine's setting: idle threads sleep rather than spin.
        b = b.with_intra_op_spinning(false).unwrap();
        let eps = providers(a, cache);
        if !eps.is_empty() {
            b = b.with_execution_providers(eps).unwrap();
        }
        b.commit_from_file(a.model.join(comp).join("model.onnx"))
            .unwrap_or_else(|e| panic!("{comp}: {e}"))
    }

    fn step(&mut self) {
        let t0 = Instant::now();
        drop(
            self.enc
                .run(ort::inputs!["sample" => &self.enc_in])
                .unwrap(),
        );
        let t1 = Instant::now();
        for inputs in &self.unet_in {
            let feeds: Vec<(String, SessionInputValue<'_>)> = inputs
                .iter()
                .map(|(n, v)| (n.to_string(), v.into()))
                .collect();
            drop(self.unet.run(feeds).unwrap());
        }
        let t2 = Instant::now();
        drop(
            self.dec
                .run(ort::inputs!["latent_sample" => &self.dec_in])
                .unwrap(),
        );
        let t3 = Instant::now();
        self.enc_t += t1 - t0;
        self.unet_t += t2 - t1;
        self.dec_t += t3 - t2;
    }
}

fn main() {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let size = a.size as usize;
    let l = size / 8;
    let cache = a
        .cache
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("i2i-engine-bench-trt"));
    let opts = LoadOptions {
        model_dir: a.model.clone(),
        width: a.size,
        height: a.size,
        batch_size: a.batch,
        execution_provider: a.provider,
        device_id: 0,
        fp16: a.fp16,
        engine_cache_dir: Some(cache.join("engine")),
        intra_threads: a.threads,
        cpu_arena: a.cpu_arena,
        ..Default::default()
    };
    let params = StreamParams {
        prompt: "a watercolor painting of a lighthouse".into(),
        negative_prompt: "blurry".into(),
        t_index_list: a.t_index.clone(),
        cfg_type: a.cfg,
        guidance_scale: 1.4,
        ..StreamParams::default()
    };
    let mut engine = match Engine::load(&opts, &params) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("engine-bench: {e}");
            std::process::exit(1);
        }
    };
    let n = engine.steps();
    let b = a.batch;
    let pictures: Vec<Vec<u8>> = (0..8).map(|k| picture(k, size)).collect();

    // The UNet rows of one warm call, as the engine lays them out (per timestep, high to
    // low): conditional rows, plus negative rows for full CFG and for initialize's step 0.
    let sched =
        SchedulerConfig::from_file(&a.model.join("scheduler").join("scheduler_config.json"))
            .unwrap();
    let steps = sched.schedule(&a.t_index, 50).unwrap();
    let per_step: Vec<usize> = (0..n)
        .map(|i| match a.cfg {
            CfgType::Full => 2 * b,
            CfgType::Initialize if i == 0 => 2 * b,
            _ => b,
        })
        .collect();
    let rows: usize = per_step.iter().sum();
    let cond = engine.encode_prompt(&params.prompt).unwrap();
    let e = cond.shape[2];

    let bare_cache = cache.join("bare");
    let _ = std::fs::create_dir_all(&bare_cache);
    let enc = Bare::session(&a, "vae_encoder", &bare_cache);
    let unet = Bare::session(&a, "unet", &bare_cache);
    let dec = Bare::session(&a, "vae_decoder", &bare_cache);
    let (enc_ty, _) = input_type(&enc, "sample");
    let (dec_ty, _) = input_type(&dec, "latent_sample");
    let (s_ty, _) = input_type(&unet, "sample");
    let (t_ty, t_rank) = input_type(&unet, "timestep");
    let (h_ty, _) = input_type(&unet, "encoder_hidden_states");
    let image: Vec<f32> = (0..b * 3 * size * size)
        .map(|i| ((i % 511) as f32 / 255.0) - 1.0)
        .collect();
    let latent = vec![0.1f32; 4 * l * l];
    // SDXL: the engine's packed conditioning is 77 hidden-state rows, then the pooled vector
    // (text_embeds); time_ids are the frame size.
    let pooled = unet
        .inputs()
        .iter()
        .find(|o| o.name() == "text_embeds")
        .map(|o| match o.dtype() {
            ValueType::Tensor { shape, .. } => shape.get(1).copied().unwrap_or(0).max(0) as usize,
            _ => 0,
        });
    let hidden_row = &cond.data[..77 * e];
    let mut unet_in = Vec::new();
    let groups: Vec<(usize, usize)> = if t_rank == 0 {
        (0..n).map(|i| (i, per_step[i])).collect()
    } else {
        vec![(usize::MAX, rows)]
    };
    for (i, g) in groups {
        let ts: Vec<f32> = if i == usize::MAX {
            (0..n)
                .flat_map(|s| std::iter::repeat_n(steps[s].timestep as f32, per_step[s]))
                .collect()
        } else {
            vec![steps[i].timestep as f32]
        };
        let t_shape = if t_rank == 0 { vec![] } else { vec![g as i64] };
        let sample: Vec<f32> = (0..g).flat_map(|_| latent.iter().copied()).collect();
        let hidden: Vec<f32> = (0..g).flat_map(|_| hidden_row.iter().copied()).collect();
        let mut inputs = vec![
            (
                "sample",
                tensor(s_ty, vec![g as i64, 4, l as i64, l as i64], &sample),
            ),
            ("timestep", tensor(t_ty, t_shape, &ts)),
            (
                "encoder_hidden_states",
                tensor(h_ty, vec![g as i64, 77, e as i64], &hidden),
            ),
        ];
        if let Some(p) = pooled {
            let te: Vec<f32> = (0..g)
                .flat_map(|_| cond.data[77 * e..77 * e + p].iter().copied())
                .collect();
            let s = size as f32;
            let ids: Vec<f32> = (0..g).flat_map(|_| [s, s, 0.0, 0.0, s, s]).collect();
            let (te_ty, _) = input_type(&unet, "text_embeds");
            let (id_ty, _) = input_type(&unet, "time_ids");
            inputs.push(("text_embeds", tensor(te_ty, vec![g as i64, p as i64], &te)));
            inputs.push(("time_ids", tensor(id_ty, vec![g as i64, 6], &ids)));
        }
        unet_in.push(inputs);
    }
    let dec_lat: Vec<f32> = (0..b).flat_map(|_| latent.iter().copied()).collect();
    let mut bare = Bare {
        enc_in: tensor(enc_ty, vec![b as i64, 3, size as i64, size as i64], &image),
        dec_in: tensor(dec_ty, vec![b as i64, 4, l as i64, l as i64], &dec_lat),
        unet_in,
        enc,
        unet,
        dec,
        enc_t: Duration::ZERO,
        unet_t: Duration::ZERO,
        dec_t: Duration::ZERO,
    };

    // Input frames are made before each timed call: the engine takes them by value, and
    // making them is the caller's work.
    let mut tag = 0u64;
    let mut make = |count: usize| -> Vec<Vec<InputFrame>> {
        let mut batches = Vec::new();
        let mut left = count;
        while left > 0 {
            let k = left.min(b);
            batches.push(
                (0..k)
                    .map(|_| {
                        tag += 1;
                        InputFrame {
                            tag,
                            rgb: pictures[tag as usize % pictures.len()].clone(),
                        }
                    })
                    .collect(),
            );
            left -= k;
        }
        batches
    };
    // Warm-up: fill the engine's pipeline, let both allocate (and build TensorRT engines).
    for batch in make((n + 2) * b) {
        engine.process(batch).unwrap();
    }
    for _ in 0..3 {
        bare.step();
    }
    bare.enc_t = Duration::ZERO;
    bare.unet_t = Duration::ZERO;
    bare.dec_t = Duration::ZERO;

    let per_round = a.frames.div_ceil(b) * b;
    let mut bare_total = Duration::ZERO;
    let mut engine_total = Duration::ZERO;
    let mut bare_cpu = Duration::ZERO;
    let mut engine_cpu = Duration::ZERO;
    let start = engine.timings();
    let mut engine_frames = 0;
    for _ in 0..a.rounds {
        for batch in make(per_round) {
            let (t0, c0) = (Instant::now(), thread_cpu());
            bare.step();
            bare_total += t0.elapsed();
            bare_cpu += thread_cpu() - c0;
            let (t0, c0) = (Instant::now(), thread_cpu());
            engine_frames += engine.process(batch).unwrap().len();
            engine_total += t0.elapsed();
            engine_cpu += thread_cpu() - c0;
        }
    }
    let frames = per_round * a.rounds;
    let calls = frames / b;
    let t = engine.timings();
    let d = |f: fn(&Timings) -> Duration| f(&t) - f(&start);

    let bare_ms = ms(bare_total, frames);
    let engine_ms = ms(engine_total, frames);
    println!(
        "engine-bench: {} at {size}x{size}, provider {} (fp16 {}), batch {b}, n = {n}, cfg {}, {rows} UNet rows per call ({} UNet call(s)), {} intra-op thread(s), {frames} frames",
        a.model.display(),
        engine.provider(),
        a.fp16,
        params.cfg_type,
        bare.unet_in.len(),
        a.threads,
    );
    println!(
        "bare ONNX Runtime : {bare_ms:8.2} ms/frame  {:7.1} frames/s",
        1000.0 / bare_ms
    );
    println!(
        "engine            : {engine_ms:8.2} ms/frame  {:7.1} frames/s  ({engine_frames} frames out)",
        1000.0 / engine_ms
    );
    println!(
        "ratio bare/engine : {:8.3}  (wall time; 1.0 = no engine overhead)",
        bare_ms / engine_ms
    );
    if a.threads == 1 && a.provider == ExecutionProvider::Cpu {
        let (bc, ec) = (ms(bare_cpu, frames), ms(engine_cpu, frames));
        println!(
            "CPU time          : {bc:8.2} / {ec:.2} ms/frame bare / engine, ratio {:.3}  (this thread; load-independent)",
            bc / ec
        );
    }
    println!(
        "engine latency    : {:8.2} ms  (a frame comes out n = {n} calls after it went in; {:.2} ms per call)",
        n as f64 * ms(engine_total, calls),
        ms(engine_total, calls)
    );
    println!("per stage, ms/frame        bare    engine");
    println!(
        "  preprocess            {:>8}  {:8.2}",
        "-",
        ms(d(|t| t.preprocess), frames)
    );
    println!(
        "  vae encode            {:8.2}  {:8.2}",
        ms(bare.enc_t, frames),
        ms(d(|t| t.vae_encode), frames)
    );
    println!(
        "  unet                  {:8.2}  {:8.2}",
        ms(bare.unet_t, frames),
        ms(d(|t| t.unet), frames)
    );
    println!(
        "  vae decode            {:8.2}  {:8.2}",
        ms(bare.dec_t, frames),
        ms(d(|t| t.vae_decode), frames)
    );
    println!(
        "  postprocess           {:>8}  {:8.2}",
        "-",
        ms(d(|t| t.postprocess), frames)
    );
    let staged = d(|t| t.preprocess)
        + d(|t| t.vae_encode)
        + d(|t| t.unet)
        + d(|t| t.vae_decode)
        + d(|t| t.postprocess);
    println!(
        "  engine bookkeeping    {:>8}  {:8.2}  (latent math, row gathering, ordering)",
        "-",
        ms(engine_total.saturating_sub(staged), frames)
    );
}
