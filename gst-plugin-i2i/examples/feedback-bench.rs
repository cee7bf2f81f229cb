// SPDX-License-Identifier: MPL-2.0
//! Flicker benchmark for `latent-feedback`: a static scene with small per-frame sensor
//! noise goes through the engine at several feedback strengths; for each it prints the
//! mean absolute frame-to-frame change of the output (0-255 scale), beside the input's own
//! change and as a ratio to feedback 0, all measured in the same run.
//!
//!     cargo run --release -p gst-plugin-i2i --example feedback-bench -- \
//!         [--model models/demo] [--size 256] [--frames 40] [--noise 3] \
//!         [--feedback 0,0.15,0.3] [--t-index-list 32,45] [--threads 1]
//!
//! The first frames (until the stream batch is warm and the feedback has a previous latent)
//! are left out of the mean.

use std::path::PathBuf;

use gsti2i::diffusion::{CfgType, Engine, InputFrame, StreamParams};

mod common;

struct Args {
    model: PathBuf,
    size: u32,
    frames: usize,
    noise: f32,
    feedback: Vec<f32>,
    t_index: Vec<u32>,
    threads: usize,
}

const USAGE: &str = "usage: feedback-bench [--model DIR] [--size N] [--frames N] [--noise SIGMA] \
     [--feedback 0,0.15,0.3] [--t-index-list 32,45] [--threads N]";

fn list<T: std::str::FromStr>(v: &str, what: &str) -> Result<Vec<T>, String> {
    v.split(',')
        .map(|x| {
            x.trim()
                .parse()
                .map_err(|_| format!("{what}: bad value {x:?}"))
        })
        .collect()
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        model: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/demo")),
        size: 256,
        frames: 40,
        noise: 3.0,
        feedback: vec![0.0, 0.15, 0.3],
        t_index: vec![32, 45],
        threads: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it
            .next()
            .ok_or_else(|| format!("{k} needs a value\n{USAGE}"))?;
        let num = |what: &str| format!("{what}: bad value {v:?}");
        match k.as_str() {
            "--model" => a.model = PathBuf::from(v),
            "--size" => a.size = v.parse().map_err(|_| num("--size"))?,
            "--frames" => a.frames = v.parse().map_err(|_| num("--frames"))?,
            "--noise" => a.noise = v.parse().map_err(|_| num("--noise"))?,
            "--feedback" => a.feedback = list(&v, "--feedback")?,
            "--t-index-list" => a.t_index = list(&v, "--t-index-list")?,
            "--threads" => a.threads = v.parse().map_err(|_| num("--threads"))?,
            _ => return Err(format!("unknown option {k}\n{USAGE}")),
        }
    }
    if a.size == 0 || !a.size.is_multiple_of(8) {
        return Err(format!("--size {}: a multiple of 8", a.size));
    }
    if a.frames < 8 {
        return Err("--frames: at least 8".into());
    }
    Ok(a)
}

/// A fixed scene: gradients, a disc and stripes.
fn scene(size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size * size * 3];
    let c = size as f32 / 2.0;
    for y in 0..size {
        for x in 0..size {
            let i = (y * size + x) * 3;
            let (dx, dy) = (x as f32 - c, y as f32 - c);
            let disc = dx * dx + dy * dy < (size as f32 / 4.0).powi(2);
            v[i] = (x * 255 / size) as u8;
            v[i + 1] = if disc { 210 } else { (y * 255 / size) as u8 };
            v[i + 2] = if (x / 16) % 2 == 0 { 60 } else { 170 };
        }
    }
    v
}

/// Gaussian sensor noise of `sigma` (0-255 scale) from a fixed generator, so every run
/// sees the same frames.
struct Sensor(u64);

impl Sensor {
    fn uniform(&mut self) -> f32 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((z >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }

    fn gauss(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }

    fn frame(&mut self, scene: &[u8], sigma: f32) -> Vec<u8> {
        scene
            .iter()
            .map(|&p| (p as f32 + sigma * self.gauss()).round().clamp(0.0, 255.0) as u8)
            .collect()
    }
}

fn mean_abs_change<T: Copy + Into<f64>>(frames: &[Vec<T>], scale: f64, skip: usize) -> f64 {
    let pairs: Vec<f64> = frames
        .windows(2)
        .skip(skip)
        .map(|w| {
            let s: f64 = w[0]
                .iter()
                .zip(&w[1])
                .map(|(&a, &b)| (a.into() - b.into()).abs())
                .sum();
            s * scale / w[0].len() as f64
        })
        .collect();
    pairs.iter().sum::<f64>() / pairs.len().max(1) as f64
}

fn main() {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("feedback-bench: {e}");
            std::process::exit(2);
        }
    };
    let opts = gsti2i::diffusion::LoadOptions {
        fp16: false,
        ..common::cpu_options(&a.model, a.size, a.threads)
    };
    let params = StreamParams {
        prompt: "a watercolor painting of a garden".into(),
        t_index_list: a.t_index.clone(),
        cfg_type: CfgType::SelfNegative,
        ..StreamParams::default()
    };
    let size = a.size as usize;
    let base = scene(size);
    let mut sensor = Sensor(12345);
    let inputs: Vec<Vec<u8>> = (0..a.frames)
        .map(|_| sensor.frame(&base, a.noise))
        .collect();
    // Warm: the stream batch (n - 1 frames) and the first previous latent (n more).
    let skip = 2 * a.t_index.len();
    let input_change = mean_abs_change(&inputs, 1.0, skip);
    println!(
        "model {}, {size}x{size}, {} frames, sensor noise sigma {} (0-255), t-index-list {:?}",
        a.model.display(),
        a.frames,
        a.noise,
        a.t_index
    );
    println!("input: mean abs frame-to-frame change {input_change:.3}");
    println!("| latent-feedback | output change (0-255) | vs feedback 0 | vs input |");
    println!("|---|---|---|---|");
    let mut base_change = None;
    for &s in &a.feedback {
        let mut engine = match Engine::load(&opts, &params) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("feedback-bench: {e}");
                std::process::exit(2);
            }
        };
        engine.set_latent_feedback(s);
        let mut outs = Vec::new();
        for (k, f) in inputs.iter().enumerate() {
            let out = engine
                .process(vec![InputFrame {
                    tag: k as u64,
                    rgb: f.clone(),
                }])
                .unwrap_or_else(|e| panic!("{e}"));
            outs.extend(out.into_iter().map(|o| o.pixels.to_vec()));
        }
        outs.extend(
            engine
                .drain()
                .unwrap_or_else(|e| panic!("{e}"))
                .into_iter()
                .map(|o| o.pixels.to_vec()),
        );
        let change = mean_abs_change(&outs, 255.0, skip);
        let b = *base_change.get_or_insert(change);
        println!(
            "| {s} | {change:.3} | {:.3}x | {:.3}x |",
            change / b,
            change / input_change
        );
    }
}
