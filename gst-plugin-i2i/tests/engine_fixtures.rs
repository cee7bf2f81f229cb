// SPDX-License-Identifier: MPL-2.0
//! The engine's tokenizer, LCM scheduler and noise generator against the fixtures made by
//! transformers' CLIPTokenizer, diffusers' LCMScheduler and tests/python/i2i_noise.py.

use std::path::{Path, PathBuf};

use gsti2i::diffusion::noise;
use gsti2i::diffusion::scheduler::SchedulerConfig;
use gsti2i::diffusion::tokenizer::ClipTokenizer;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn fixture(name: &str) -> Value {
    let p = root().join("tests").join("fixtures").join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

fn model_dir(name: &str) -> PathBuf {
    let d = root().join("models").join(name);
    assert!(
        d.is_dir(),
        "{} is missing: run scripts/setup.sh (or .venv/bin/python scripts/make_models.py --out models)",
        d.display()
    );
    d
}

#[test]
fn tokenizer_ids_equal_transformers() {
    let fx = fixture("tokenizer_ids.json");
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 100, "fixture has {} prompts", cases.len());
    let mut checked = 0;
    for (name, info) in fx["tokenizers"].as_object().unwrap() {
        let dir = model_dir(name).join("tokenizer");
        let mut tok = ClipTokenizer::from_dir(&dir).unwrap();
        assert_eq!(
            tok.pad_id() as u64,
            info["pad_id"].as_u64().unwrap(),
            "{name} pad"
        );
        for case in cases {
            let prompt = case["prompt"].as_str().unwrap();
            let want: Vec<u32> = case["ids"][name]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let got = tok.encode(prompt);
            assert_eq!(got, want, "{name}: prompt {prompt:?}");
            checked += 1;
        }
    }
    assert!(checked >= 200);
}

#[test]
fn scheduler_constants_equal_diffusers() {
    let fx = fixture("lcm_scheduler.json");
    let configs = fx["configs"].as_object().unwrap();
    let mut checked = 0;
    for case in fx["cases"].as_array().unwrap() {
        let name = case["config"].as_str().unwrap();
        let cfg = SchedulerConfig::from_json(
            &configs[name].to_string(),
            Path::new(&format!("{name}/scheduler_config.json")),
        )
        .unwrap();
        let steps = case["num_inference_steps"].as_u64().unwrap() as u32;
        let t_index: Vec<u32> = case["t_index_list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let all: Vec<u32> = case["all_timesteps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            cfg.lcm_timesteps(steps).unwrap(),
            all,
            "{name} {steps} steps"
        );
        let s = cfg.schedule(&t_index, steps).unwrap();
        let col = |k: &str| -> Vec<f64> {
            case[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        };
        for (i, c) in s.iter().enumerate() {
            let ctx = format!("{name} {t_index:?}/{steps} step {i}");
            assert_eq!(c.timestep as f64, col("timesteps")[i], "{ctx}");
            // float32 values: abar equal to the bit; the square roots within one unit in
            // the last place (torch's CPU sqrt is not always correctly rounded; the engine's
            // and numpy's are).
            assert_eq!(
                c.alpha_cumprod,
                col("alphas_cumprod")[i] as f32,
                "{ctx} abar"
            );
            let ulp1 =
                |a: f32, b: f64| (a.to_bits() as i64 - (b as f32).to_bits() as i64).abs() <= 1;
            assert!(
                ulp1(c.alpha, col("alpha")[i]),
                "{ctx} alpha {} vs {}",
                c.alpha,
                col("alpha")[i]
            );
            assert!(
                ulp1(c.beta, col("beta")[i]),
                "{ctx} beta {} vs {}",
                c.beta,
                col("beta")[i]
            );
            let close = |a: f32, b: f64| (a as f64 - b).abs() <= 1e-7 * b.abs().max(1e-30);
            assert!(
                close(c.c_skip, col("c_skip")[i]),
                "{ctx} c_skip {} vs {}",
                c.c_skip,
                col("c_skip")[i]
            );
            assert!(
                close(c.c_out, col("c_out")[i]),
                "{ctx} c_out {} vs {}",
                c.c_out,
                col("c_out")[i]
            );
            checked += 1;
        }
    }
    assert!(checked > 20);
    let abar = SchedulerConfig::default().alphas_cumprod();
    let want = fx["alphas_cumprod_all"].as_array().unwrap();
    assert_eq!(abar.len(), want.len());
    for (t, (a, w)) in abar.iter().zip(want).enumerate() {
        assert_eq!(*a, w.as_f64().unwrap() as f32, "alphas_cumprod[{t}]");
    }
}

#[test]
fn noise_equals_numpy_generator() {
    let fx = fixture("noise_seeds.json");
    assert_eq!(
        fx["filter_seed_xor"].as_u64().unwrap(),
        noise::COIN_SEED_XOR
    );
    for s in fx["seeds"].as_array().unwrap() {
        let seed = s["seed"].as_u64().unwrap();
        let list = |k: &str| -> Vec<f64> {
            s[k].as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        };
        for (k, v) in s["splitmix64"].as_array().unwrap().iter().enumerate() {
            assert_eq!(
                noise::splitmix64(seed, k as u64),
                v.as_u64().unwrap(),
                "seed {seed} draw {k}"
            );
        }
        // float64 values; serde_json's default number parser may be one ulp off.
        let same64 = |a: f64, b: f64| (a - b).abs() <= 4.0 * f64::EPSILON * b.abs();
        for (k, u) in list("uniforms").iter().enumerate() {
            let got = noise::uniform(seed, k as u64);
            assert!(same64(got, *u), "seed {seed} u_{k}: {got} vs {u}");
        }
        let mut g = vec![0.0f32; 4096];
        noise::fill_normal(seed, &mut g);
        for (j, v) in list("normals_0_16").iter().enumerate() {
            assert_eq!(g[j], *v as f32, "seed {seed} g_{j}");
        }
        for (j, v) in list("normals_4090_4096").iter().enumerate() {
            assert_eq!(g[4090 + j], *v as f32, "seed {seed} g_{}", 4090 + j);
        }
        let sum: f64 = g.iter().map(|&x| x as f64).sum();
        let want = s["normals_sum_4096"].as_f64().unwrap();
        assert!(
            (sum - want).abs() < 1e-9 * want.abs().max(1.0),
            "seed {seed} sum {sum} vs {want}"
        );
        let n = noise::init_noise(seed, 3, 8, 8);
        let inn = &s["init_noise_3x4x8x8"];
        let first: Vec<f64> = inn["slot0_first4"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let last: Vec<f64> = inn["slot2_last4"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let as32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
        assert_eq!(n.data[..4], as32(&first)[..]);
        assert_eq!(n.data[n.data.len() - 4..], as32(&last)[..]);
        for (f, c) in list("filter_coins_0_5").iter().enumerate() {
            let got = noise::coin(seed, f as u64);
            assert!(same64(got, *c), "seed {seed} coin {f}: {got} vs {c}");
        }
    }
}
