// SPDX-License-Identifier: MPL-2.0
//! IP-Adapter benchmark, both figures from one run:
//!
//! 1. the inference thread's time per frame with a picture's image tokens against the same
//!    model without a picture (its image rows zero), two engines on the same frames, rounds
//!    taken in turn (A B A B ...) so that a drifting machine moves both;
//! 2. the time a new style picture takes to reach the output: a second thread decodes the
//!    file and runs the image side (as `i2itransform`'s encoder thread does) while the
//!    inference thread goes on with frames; measured from the request to the first output
//!    frame made with the picture's tokens.
//!
//! Run:
//!
//!     cargo run --release -p gst-plugin-i2i --example ipadapter-bench -- \
//!         [--model models/tiny-ipadapter] [--size 64] [--frames 30] [--rounds 5] [--threads 1]
//!
//! Prints medians and the ratio.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gsti2i::diffusion::ipadapter::{ImageSide, PictureTokens, decode_picture};
use gsti2i::diffusion::{CfgType, Engine, InputFrame, StreamParams};

mod common;

struct Args {
    model: PathBuf,
    size: u32,
    frames: usize,
    rounds: usize,
    threads: usize,
}

const USAGE: &str =
    "usage: ipadapter-bench [--model DIR] [--size N] [--frames N] [--rounds N] [--threads N]";

fn parse() -> Result<Args, String> {
    let mut a = Args {
        model: PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../models/tiny-ipadapter"
        )),
        size: 64,
        frames: 30,
        rounds: 5,
        threads: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it
            .next()
            .ok_or_else(|| format!("{k} needs a value\n{USAGE}"))?;
        let bad = || format!("{k}: bad value {v:?}");
        match k.as_str() {
            "--model" => a.model = PathBuf::from(&v),
            "--size" => a.size = v.parse().map_err(|_| bad())?,
            "--frames" => a.frames = v.parse().map_err(|_| bad())?,
            "--rounds" => a.rounds = v.parse().map_err(|_| bad())?,
            "--threads" => a.threads = v.parse().map_err(|_| bad())?,
            _ => return Err(format!("unknown option {k}\n{USAGE}")),
        }
    }
    Ok(a)
}

fn frame(k: usize, size: u32) -> Vec<u8> {
    let n = size as usize;
    let mut v = vec![0u8; n * n * 3];
    for (i, px) in v.iter_mut().enumerate() {
        *px = ((i * 7 + k * 13) % 251) as u8;
    }
    v
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The inference thread's CPU and wall ms per frame of one round.
fn round(engine: &mut Engine, frames: &[Vec<u8>]) -> (f64, f64) {
    let (c0, w0) = (common::thread_cpu(), Instant::now());
    for (k, f) in frames.iter().enumerate() {
        engine
            .process(vec![InputFrame {
                tag: k as u64,
                rgb: f.clone(),
            }])
            .expect("frame");
    }
    engine.drain().expect("drain");
    let n = frames.len() as f64;
    (
        (common::thread_cpu() - c0).as_secs_f64() * 1e3 / n,
        w0.elapsed().as_secs_f64() * 1e3 / n,
    )
}

fn main() {
    let a = parse().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    let opts = common::cpu_options(&a.model, a.size, a.threads);
    let params = StreamParams {
        prompt: "a red fox in the snow".into(),
        t_index_list: vec![32, 45],
        cfg_type: CfgType::SelfNegative,
        ..Default::default()
    };
    let mut plain = Engine::load(&opts, &params).expect("load");
    let layout = plain
        .ip_layout()
        .expect("an IP-Adapter model (its UNet takes ipadapter_scale)");
    let mut side = ImageSide::load(&a.model, layout, a.threads, true).expect("image side");
    let dir = std::env::temp_dir().join(format!("ipadapter-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let style = dir.join("style.png");
    let big = 512u32;
    let pic: Vec<u8> = (0..big * big * 3).map(|i| (i % 253) as u8).collect();
    image::RgbImage::from_raw(big, big, pic)
        .unwrap()
        .save(&style)
        .unwrap();
    let (rgb, w, h) = decode_picture(&style).unwrap();
    let tokens = PictureTokens {
        tokens: Arc::new(side.tokens(&rgb, w, h).unwrap()),
        negative: Arc::new(side.negative_tokens().unwrap()),
    };
    let mut styled = Engine::load(&opts, &params).expect("load");
    styled.set_ip_picture(Some(tokens)).unwrap();

    let frames: Vec<Vec<u8>> = (0..a.frames).map(|k| frame(k, a.size)).collect();
    // Warm-up.
    round(&mut plain, &frames[..4.min(frames.len())]);
    round(&mut styled, &frames[..4.min(frames.len())]);
    let (mut cpu_a, mut cpu_b, mut wall_a, mut wall_b, mut ratios) =
        (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..a.rounds {
        let (c_b, w_b) = round(&mut plain, &frames);
        let (c_a, w_a) = round(&mut styled, &frames);
        cpu_a.push(c_a);
        cpu_b.push(c_b);
        wall_a.push(w_a);
        wall_b.push(w_b);
        ratios.push(c_a / c_b);
    }
    println!(
        "{} {}x{}, {} frames x {} rounds, {} thread(s), t-index-list 32,45:",
        a.model.display(),
        a.size,
        a.size,
        a.frames,
        a.rounds,
        a.threads
    );
    println!(
        "inference thread CPU per frame: with a picture {:.3} ms, without {:.3} ms, ratio {:.3}x (median of pairs); wall {:.3} vs {:.3} ms",
        median(cpu_a),
        median(cpu_b),
        median(ratios),
        median(wall_a),
        median(wall_b)
    );

    // A new picture while frames run: the request to the first output frame with it.
    let n = plain.latency_frames();
    let mut reach = Vec::new();
    let mut encode = Vec::new();
    for r in 0..a.rounds {
        let (tx, rx) = mpsc::channel();
        let (style, model) = (style.clone(), a.model.clone());
        let threads = a.threads;
        let mut e = Engine::load(&opts, &params).expect("load");
        // A running stream: warm, frames in flight.
        let mut k = 0u64;
        while k < 4 {
            e.process(vec![InputFrame {
                tag: k,
                rgb: frames[k as usize % frames.len()].clone(),
            }])
            .unwrap();
            k += 1;
        }
        let started = Instant::now();
        // The encoder thread opens its sessions at start; here too, before the request.
        let mut side = ImageSide::load(&model, layout, threads, true).expect("image side");
        let negative = Arc::new(side.negative_tokens().unwrap());
        let asked = Instant::now();
        let worker = std::thread::spawn(move || {
            let (rgb, w, h) = decode_picture(&style).unwrap();
            let t = side.tokens(&rgb, w, h).unwrap();
            let took = asked.elapsed();
            tx.send((
                PictureTokens {
                    tokens: Arc::new(t),
                    negative,
                },
                took,
            ))
            .unwrap();
        });
        let mut entered_with = None;
        let reached = loop {
            if entered_with.is_none()
                && let Ok((p, took)) = rx.try_recv()
            {
                e.set_ip_picture(Some(p)).unwrap();
                encode.push(took.as_secs_f64() * 1e3);
                entered_with = Some(k);
            }
            let outs = e
                .process(vec![InputFrame {
                    tag: k,
                    rgb: frames[k as usize % frames.len()].clone(),
                }])
                .unwrap();
            if let Some(first) = entered_with
                && outs.iter().any(|o| o.tag >= first)
            {
                break asked.elapsed();
            }
            k += 1;
            assert!(started.elapsed() < Duration::from_secs(120), "round {r}");
        };
        worker.join().unwrap();
        reach.push(reached.as_secs_f64() * 1e3);
    }
    println!(
        "new style picture ({}x{} PNG) to the output: {:.2} ms median (decode + image side on its own thread {:.2} ms; then the next frame and {} more call(s) of the stream batch)",
        big,
        big,
        median(reach),
        median(encode),
        n
    );
    let _ = std::fs::remove_dir_all(&dir);
}
