// SPDX-License-Identifier: MPL-2.0
//! What prompt weighting costs when a prompt changes: the engine's `encode_prompt` (tokenizer
//! and text encoder) on a prompt with `(word:1.5)` / `[word]` weights against the same words
//! without them, taken in turn in the same run, as medians and their ratio; and the
//! weighting's own work (parsing, tokenizing run by run, scaling the `[77, E]` rows) beside
//! the plain tokenizer's.
//!
//!     cargo run --release -p gst-plugin-i2i --example weights-bench -- \
//!         [--model models/tiny-sd15] [--rounds 200] [--threads 1]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use gsti2i::diffusion::tokenizer::ClipTokenizer;
use gsti2i::diffusion::{Engine, StreamParams, weights};

mod common;

const PLAIN: &str = "a red fox in the snow, oil painting, golden hour, detailed fur";
const WEIGHTED: &str =
    "a (red:1.5) fox in the [snow], ((oil painting)), golden hour, (detailed fur:0.8)";
const USAGE: &str = "usage: weights-bench [--model DIR] [--rounds N] [--threads N]";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> Result<(), String> {
    let mut model = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/tiny-sd15"));
    let mut rounds = 200usize;
    let mut threads = 1usize;
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it
            .next()
            .ok_or_else(|| format!("{k} needs a value\n{USAGE}"))?;
        let bad = || format!("{k}: bad value {v:?}\n{USAGE}");
        match k.as_str() {
            "--model" => model = PathBuf::from(&v),
            "--rounds" => rounds = v.parse::<usize>().map_err(|_| bad())?.max(1),
            "--threads" => threads = v.parse().map_err(|_| bad())?,
            _ => return Err(format!("unknown argument {k}\n{USAGE}")),
        }
    }
    let opts = common::cpu_options(&model, 64, threads);
    let mut engine = Engine::load(&opts, &StreamParams::default()).map_err(|e| e.to_string())?;
    let mut tok = ClipTokenizer::from_dir(&model.join("tokenizer")).map_err(|e| e.to_string())?;
    let shape = engine
        .encode_prompt(PLAIN)
        .map_err(|e| e.to_string())?
        .shape;
    let rows = vec![0.5f32; shape[1] * shape[2]];
    let (mut plain, mut weighted, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut tok_plain, mut tok_weighted) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        std::hint::black_box(engine.encode_prompt(PLAIN).map_err(|e| e.to_string())?);
        let p = t.elapsed();
        let t = Instant::now();
        std::hint::black_box(engine.encode_prompt(WEIGHTED).map_err(|e| e.to_string())?);
        let w = t.elapsed();
        plain.push(p);
        weighted.push(w);
        ratios.push(w.as_secs_f64() / p.as_secs_f64());

        let t = Instant::now();
        std::hint::black_box(tok.encode(PLAIN));
        tok_plain.push(t.elapsed());
        let mut z = rows.clone();
        let t = Instant::now();
        let (ids, w) = weights::weighted_ids(&mut tok, WEIGHTED).expect("the bench prompt parses");
        weights::apply(&mut z, &w);
        std::hint::black_box((ids, z));
        tok_weighted.push(t.elapsed());
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "{} [1, {}, {}], {rounds} rounds, {threads} thread(s)",
        model.display(),
        shape[1],
        shape[2]
    );
    println!(
        "encode_prompt plain {:.3} ms, weighted {:.3} ms (medians), weighted / plain {:.3}x (median of pairs)",
        ms(median(plain)),
        ms(median(weighted)),
        ratios[ratios.len() / 2]
    );
    println!(
        "tokenizer alone {:.1} us; weighted ids + scaling the rows {:.1} us (medians)",
        ms(median(tok_plain)) * 1e3,
        ms(median(tok_weighted)) * 1e3
    );
    Ok(())
}
