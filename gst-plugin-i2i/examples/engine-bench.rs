// SPDX-License-Identifier: MPL-2.0
//! Engine overhead benchmark: the engine's time per frame against bare ONNX Runtime running
//! the same graphs on the same tensor shapes (sessions made directly with ort, the same
//! thread settings, no engine logic) in the same process, interleaved call by call.
//!
//!     cargo run --release -p gst-plugin-i2i --example engine-bench -- \
//!         [--model models/demo] [--size 512] [--batch 1] [--threads 1] [--frames 30]
//!         [--rounds 3] [--cfg self|none|full|initialize] [--t-index-list 32,45]
//!
//! Prints ms per frame for both, the ratio bare / engine (1.0 = no overhead) and where the
//! time goes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use gsti2i::diffusion::{
    CfgType, Engine, ExecutionProvider, InputFrame, LoadOptions, StreamParams, Timings, runtime,
    scheduler::SchedulerConfig,
};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

struct Args {
    model: PathBuf,
    size: u32,
    batch: usize,
    threads: usize,
    frames: usize,
    rounds: usize,
    cfg: CfgType,
    t_index: Vec<u32>,
}

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
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or(format!("{k} needs a value"));
        match k.as_str() {
            "--model" => a.model = PathBuf::from(v()?),
            "--size" => a.size = v()?.parse().map_err(|e| format!("--size: {e}"))?,
            "--batch" => a.batch = v()?.parse().map_err(|e| format!("--batch: {e}"))?,
            "--threads" => a.threads = v()?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--frames" => a.frames = v()?.parse().map_err(|e| format!("--frames: {e}"))?,
            "--rounds" => a.rounds = v()?.parse().map_err(|e| format!("--rounds: {e}"))?,
            "--cfg" => {
                a.cfg = match v()?.as_str() {
                    "none" => CfgType::None,
                    "self" => CfgType::SelfNegative,
                    "full" => CfgType::Full,
                    "initialize" => CfgType::Initialize,
                    o => return Err(format!("--cfg: unknown {o}")),
                }
            }
            "--t-index-list" => {
                a.t_index = v()?
                    .split(',')
                    .map(|s| s.trim().parse().map_err(|e| format!("--t-index-list: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "-h" | "--help" => {
                return Err("usage: engine-bench [--model DIR] [--size N] [--batch N] [--threads N] \
                            [--frames N] [--rounds N] [--cfg none|self|full|initialize] [--t-index-list 32,45]"
                    .into());
            }
            o => return Err(format!("unknown argument {o}")),
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

/// The same graphs run directly: per frame batch, VAE encode [B,3,H,W], one UNet call with
/// the engine's row count, VAE decode [B,4,h,w].
struct Bare {
    enc: Session,
    unet: Session,
    dec: Session,
    images: Vec<f32>,
    latents: Vec<f32>,
    unet_sample: Vec<f32>,
    timesteps: Vec<i64>,
    hidden: Vec<f32>,
    enc_t: Duration,
    unet_t: Duration,
    dec_t: Duration,
}

impl Bare {
    fn session(dir: &std::path::Path, comp: &str, threads: usize) -> Session {
        let env = runtime::environment().unwrap_or_else(|e| panic!("{e}"));
        let mut b = Session::builder(&env)
            .unwrap()
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .unwrap();
        if threads > 0 {
            b = b.with_intra_threads(threads).unwrap();
        }
        b.commit_from_file(dir.join(comp).join("model.onnx"))
            .unwrap_or_else(|e| panic!("{comp}: {e}"))
    }

    fn step(&mut self, b: usize, size: usize, rows: usize) -> Vec<f32> {
        let l = size / 8;
        let t0 = Instant::now();
        let enc = self
            .enc
            .run(ort::inputs![
                "sample" => TensorRef::from_array_view(([b, 3, size, size], &self.images[..b * 3 * size * size])).unwrap()
            ])
            .unwrap();
        let (_, z) = enc[0].try_extract_tensor::<f32>().unwrap();
        self.latents.clear();
        self.latents.extend_from_slice(z);
        drop(enc);
        let t1 = Instant::now();
        let out = self
            .unet
            .run(ort::inputs![
                "sample" => TensorRef::from_array_view(([rows, 4, l, l], &self.unet_sample[..])).unwrap(),
                "timestep" => TensorRef::from_array_view(([rows], &self.timesteps[..])).unwrap(),
                "encoder_hidden_states" => TensorRef::from_array_view(
                    ([rows, 77, self.hidden.len() / rows / 77], &self.hidden[..])).unwrap()
            ])
            .unwrap();
        let (_, eps) = out[0].try_extract_tensor::<f32>().unwrap();
        let eps0 = eps[0];
        drop(out);
        let t2 = Instant::now();
        let dec = self
            .dec
            .run(ort::inputs![
                "latent_sample" => TensorRef::from_array_view(([b, 4, l, l], &self.latents[..])).unwrap()
            ])
            .unwrap();
        let (_, y) = dec[0].try_extract_tensor::<f32>().unwrap();
        let y: Vec<f32> = y.iter().map(|v| v + eps0 * 0.0).collect();
        let t3 = Instant::now();
        self.enc_t += t1 - t0;
        self.unet_t += t2 - t1;
        self.dec_t += t3 - t2;
        y
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
    let opts = LoadOptions {
        model_dir: a.model.clone(),
        width: a.size,
        height: a.size,
        batch_size: a.batch,
        execution_provider: ExecutionProvider::Cpu,
        device_id: 0,
        fp16: false,
        engine_cache_dir: None,
        intra_threads: a.threads,
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
    let rows = match a.cfg {
        CfgType::Full => 2 * n * a.batch,
        CfgType::Initialize => n * a.batch + a.batch,
        _ => n * a.batch,
    };
    let pictures: Vec<Vec<u8>> = (0..8).map(|k| picture(k, size)).collect();

    // Bare sessions and inputs prepared once (outside the timed part).
    let cond = engine.encode_prompt(&params.prompt).unwrap();
    let sched =
        SchedulerConfig::from_file(&a.model.join("scheduler").join("scheduler_config.json"))
            .unwrap();
    let steps = sched.schedule(&a.t_index, 50).unwrap();
    let mut bare = Bare {
        enc: Bare::session(&a.model, "vae_encoder", a.threads),
        unet: Bare::session(&a.model, "unet", a.threads),
        dec: Bare::session(&a.model, "vae_decoder", a.threads),
        images: Vec::new(),
        latents: Vec::new(),
        unet_sample: vec![0.1; rows * 4 * (size / 8) * (size / 8)],
        timesteps: (0..rows).map(|r| steps[r % n].timestep as i64).collect(),
        hidden: (0..rows).flat_map(|_| cond.data.iter().copied()).collect(),
        enc_t: Duration::ZERO,
        unet_t: Duration::ZERO,
        dec_t: Duration::ZERO,
    };
    for k in 0..a.batch {
        bare.images.extend(
            pictures[k % pictures.len()]
                .iter()
                .map(|&v| v as f32 / 255.0 * 2.0 - 1.0),
        );
        // Planar layout does not matter for the timing of a convolutional graph.
    }

    // Input frames are made before each timed part: the engine takes them by value, and
    // making them is the caller's work.
    let mut tag = 0u64;
    let mut make = |count: usize| -> Vec<Vec<InputFrame>> {
        let mut batches = Vec::new();
        let mut left = count;
        while left > 0 {
            let b = left.min(a.batch);
            batches.push(
                (0..b)
                    .map(|_| {
                        tag += 1;
                        InputFrame {
                            tag,
                            rgb: pictures[tag as usize % pictures.len()].clone(),
                        }
                    })
                    .collect(),
            );
            left -= b;
        }
        batches
    };
    // Warm-up: fill the engine pipeline and let both allocate.
    for b in make((n + 1) * a.batch) {
        engine.process(b).unwrap();
    }
    for _ in 0..2 {
        bare.step(a.batch, size, rows);
    }
    bare.enc_t = Duration::ZERO;
    bare.unet_t = Duration::ZERO;
    bare.dec_t = Duration::ZERO;

    let per_round = a.frames.div_ceil(a.batch) * a.batch;
    let mut bare_total = Duration::ZERO;
    let mut engine_total = Duration::ZERO;
    let start_timings = engine.timings();
    let mut engine_frames = 0;
    // Interleaved call by call, so both see the same machine load.
    for _ in 0..a.rounds {
        let batches = make(per_round);
        for b in batches {
            let t0 = Instant::now();
            std::hint::black_box(bare.step(a.batch, size, rows));
            bare_total += t0.elapsed();
            let t0 = Instant::now();
            engine_frames += engine.process(b).unwrap().len();
            engine_total += t0.elapsed();
        }
    }
    let frames = per_round * a.rounds;
    let t = engine.timings();
    let d = |f: fn(&Timings) -> Duration| f(&t) - f(&start_timings);

    let bare_ms = ms(bare_total, frames);
    let engine_ms = ms(engine_total, frames);
    println!(
        "engine-bench: {} at {}x{}, batch {}, n = {n}, cfg {:?}, {rows} UNet rows per call, {} intra-op thread(s), {frames} frames in {} rounds",
        a.model.display(),
        a.size,
        a.size,
        a.batch,
        a.cfg,
        a.threads,
        a.rounds
    );
    println!(
        "bare ONNX Runtime : {bare_ms:8.2} ms/frame  ({:.1} frames/s)",
        1000.0 / bare_ms
    );
    println!(
        "engine            : {engine_ms:8.2} ms/frame  ({:.1} frames/s), {engine_frames} frames out",
        1000.0 / engine_ms
    );
    println!(
        "ratio bare/engine : {:8.3}  (1.0 = no engine overhead)",
        bare_ms / engine_ms
    );
    println!("per stage, ms/frame        bare    engine");
    println!(
        "  preprocess            {:8}  {:8.2}",
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
        "  postprocess           {:8}  {:8.2}",
        "-",
        ms(d(|t| t.postprocess), frames)
    );
    let staged = d(|t| t.preprocess)
        + d(|t| t.vae_encode)
        + d(|t| t.unet)
        + d(|t| t.vae_decode)
        + d(|t| t.postprocess);
    println!(
        "  engine bookkeeping    {:8}  {:8.2}  (latent math, copies, ordering)",
        "-",
        ms(engine_total.saturating_sub(staged), frames)
    );
}
